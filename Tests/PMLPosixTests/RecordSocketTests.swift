import Glibc
import Testing
@testable import PMLPosix

@Suite struct RecordSocketTests {
    @Test func aRecordCarriesItsTextAndItsFd() throws {
        let (a, b) = try RecordSocket.pair()
        defer { closeFD(a); closeFD(b) }
        let pipe = try makePipe(nonblockingRead: false)
        defer { closeFD(pipe.read); closeFD(pipe.write) }
        #expect(RecordSocket.send(a, "hold w.1.out", fds: [pipe.read]))
        #expect(RecordSocket.send(a, "drop w.1."))
        guard case .record(let first, let fds) = RecordSocket.receive(b, limit: 1024, dontWait: true) else {
            Issue.record("no first record"); return
        }
        #expect(String(decoding: first, as: UTF8.self) == "hold w.1.out" && fds.count == 1)
        // The received fd is the same pipe: what is written comes out of it.
        try writeAll(pipe.write, "x")
        var byte: UInt8 = 0
        #expect(read(fds[0], &byte, 1) == 1 && byte == UInt8(ascii: "x"))
        #expect(fcntl(fds[0], F_GETFD) & FD_CLOEXEC != 0, "received close-on-exec")
        closeFD(fds[0])
        guard case .record(let second, let none) = RecordSocket.receive(b, limit: 1024, dontWait: true) else {
            Issue.record("no second record"); return
        }
        #expect(String(decoding: second, as: UTF8.self) == "drop w.1." && none.isEmpty, "records do not merge")
        guard case .wouldBlock = RecordSocket.receive(b, limit: 1024, dontWait: true) else { Issue.record("expected nothing more"); return }
    }

    @Test func anOversizedRecordIsDroppedWithItsFds() throws {
        let (a, b) = try RecordSocket.pair()
        defer { closeFD(a); closeFD(b) }
        let pipe = try makePipe(nonblockingRead: false)
        defer { closeFD(pipe.write) }
        #expect(RecordSocket.send(a, String(repeating: "z", count: 4000), fds: [pipe.read]))
        closeFD(pipe.read)
        guard case .record(let bytes, let fds) = RecordSocket.receive(b, limit: 100, dontWait: true) else {
            Issue.record("expected a record"); return
        }
        #expect(bytes.isEmpty && fds.isEmpty, "cut short: dropped, nothing kept")
        // Every copy of the read end is closed now: writing fails with EPIPE.
        ignoreSIGPIPE()
        #expect(write(pipe.write, "x", 1) < 0 && errno == EPIPE)
    }

    @Test func aClosedPeerReadsAsClosed() throws {
        let (a, b) = try RecordSocket.pair()
        closeFD(a)
        defer { closeFD(b) }
        guard case .closed = RecordSocket.receive(b, limit: 64, dontWait: true) else { Issue.record("expected closed"); return }
    }
}

@Suite struct ListeningSocketTests {
    @Test func onlyAListeningSocketCounts() throws {
        let (a, b) = try RecordSocket.pair()
        defer { closeFD(a); closeFD(b) }
        #expect(!isListeningSocket(a), "a socketpair end is no listener")
        let s = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { closeFD(s) }
        #expect(!isListeningSocket(s), "not before listen()")
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        #expect(bound == 0 && listen(s, 1) == 0)
        #expect(isListeningSocket(s))
        #expect(!isListeningSocket(-1))
    }
}
