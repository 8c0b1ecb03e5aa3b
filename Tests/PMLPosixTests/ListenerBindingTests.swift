import Glibc
import PMLPosix
import Testing

/// What a successor checks before it serves on a listener a daemon before bound: that it listens,
/// on the address config.json names now.
@Suite struct ListenerBindingTests {
    @Test func bindingMatchesOnlyTheConfiguredAddress() throws {
        let l = try ListeningSocket.tcp(host: "127.0.0.1", port: 0, nonBlocking: true)
        defer { close(l.fd) }
        #expect(isListeningSocket(l.fd))
        #expect(tcpBinding(l.fd, matches: "127.0.0.1", port: l.port) == (true, l.port))
        #expect(tcpBinding(l.fd, matches: "127.0.0.1", port: 0).matches, "port 0: any port")
        #expect(tcpBinding(l.fd, matches: "localhost", port: l.port).matches, "a name that resolves to it")
        #expect(!tcpBinding(l.fd, matches: "127.0.0.1", port: l.port == 65535 ? 1 : l.port + 1).matches, "another port")
        #expect(!tcpBinding(l.fd, matches: "127.0.0.2", port: l.port).matches, "another address")
        #expect(!tcpBinding(l.fd, matches: "::1", port: l.port).matches, "another family")
        #expect(!tcpBinding(l.fd, matches: "no such host.invalid", port: l.port).matches)

        // A socket that is not listening, and a pipe, are not listeners.
        let s = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(s) }
        #expect(!isListeningSocket(s) && !tcpBinding(s, matches: "127.0.0.1", port: 0).matches)
        var p: [Int32] = [0, 0]
        #expect(pipe(&p) == 0)
        defer { close(p[0]); close(p[1]) }
        #expect(!isListeningSocket(p[0]) && !tcpBinding(p[0], matches: "127.0.0.1", port: 0).matches)
    }
}
