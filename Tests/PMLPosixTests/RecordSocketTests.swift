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

    /// Sends `text` with `fds` in one sendmsg: more than `RecordSocket` ever sends (8), so that the
    /// receiver's room for 8 cuts the list (`MSG_CTRUNC`), as running out of descriptors does.
    private func sendRaw(_ socket: Int32, _ text: String, fds: [Int32]) -> Int {
        let header = MemoryLayout<cmsghdr>.size
        let length = header + fds.count * MemoryLayout<Int32>.size
        var control = [UInt8](repeating: 0, count: (length + 7) & ~7)
        control.withUnsafeMutableBytes { c in
            var h = cmsghdr()
            (h.cmsg_len, h.cmsg_level, h.cmsg_type) = (length, SOL_SOCKET, Int32(SCM_RIGHTS))
            c.storeBytes(of: h, as: cmsghdr.self)
            for (i, fd) in fds.enumerated() { c.storeBytes(of: fd, toByteOffset: header + i * 4, as: Int32.self) }
        }
        var bytes = Array(text.utf8)
        return bytes.withUnsafeMutableBytes { b in
            control.withUnsafeMutableBytes { c in
                var iov = iovec(iov_base: b.baseAddress, iov_len: b.count)
                return withUnsafeMutablePointer(to: &iov) { v in
                    var msg = msghdr(msg_name: nil, msg_namelen: 0, msg_iov: v, msg_iovlen: 1, msg_control: c.baseAddress, msg_controllen: c.count, msg_flags: 0)
                    return sendmsg(socket, &msg, 0)
                }
            }
        }
    }

    @Test func fdsCutShortAreKeptOnlyWhenAsked() throws {
        let (a, b) = try RecordSocket.pair()
        defer { closeFD(a); closeFD(b) }
        let pipe = try makePipe(nonblockingRead: false)
        defer { closeFD(pipe.read); closeFD(pipe.write) }
        let ten = [Int32](repeating: pipe.read, count: 10)
        #expect(sendRaw(a, "one", fds: ten) == 3 && sendRaw(a, "two", fds: ten) == 3)
        // Asked: the 8 that fit arrive, said to be cut.
        var cut = false
        guard case .record(let kept, let fds) = RecordSocket.receive(b, limit: 64, dontWait: true, fdsCut: &cut) else {
            Issue.record("no first record"); return
        }
        #expect(String(decoding: kept, as: UTF8.self) == "one" && fds.count == 8 && cut, "kept: \(fds.count), cut: \(cut)")
        #expect(fds.allSatisfy { fcntl($0, F_GETFD) >= 0 }, "open")
        fds.forEach(closeFD)
        // Not asked: dropped whole, as before.
        guard case .record(let dropped, let none) = RecordSocket.receive(b, limit: 64, dontWait: true) else {
            Issue.record("no second record"); return
        }
        #expect(dropped.isEmpty && none.isEmpty)
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

@Suite struct ProcessHoldsTests {
    /// Starts `sleep` with `fd` as its fd 3 (or nothing but 0-2 when nil); its pid.
    private func sleeper(inheriting fd: Int32?) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if let fd { posix_spawn_file_actions_adddup2(&actions, fd, 3) }
        var pid: pid_t = 0
        let argv: [UnsafeMutablePointer<CChar>?] = [strdup("/bin/sleep"), strdup("30"), nil]
        defer { argv.forEach { free($0) } }
        let rc = posix_spawn(&pid, "/bin/sleep", &actions, nil, argv, environ)
        guard rc == 0 else { throw SystemError("posix_spawn", errno: rc) }
        return pid
    }

    private func reap(_ pid: pid_t) {
        kill(pid, SIGKILL)
        var status: Int32 = 0
        _ = waitpid(pid, &status, 0)
    }

    @Test func aProcessHoldsASocketOnlyUnderSomeNumber() throws {
        let (a, b) = try RecordSocket.pair()
        defer { closeFD(a); closeFD(b) }
        let holder = try sleeper(inheriting: b)
        defer { reap(holder) }
        let other = try sleeper(inheriting: nil)
        defer { reap(other) }
        #expect(process(holder, holds: b), "its fd 3 is that socket")
        #expect(!process(holder, holds: a), "the other end is another socket")
        #expect(!process(other, holds: b), "sockets are close-on-exec: not inherited")
        #expect(process(holder, holds: b, limit: 2), "more descriptors than the limit: cannot tell, so held")
    }
}
