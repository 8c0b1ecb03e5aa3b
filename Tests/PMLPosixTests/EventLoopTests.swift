import Glibc
import Testing
@testable import PMLPosix

@Suite struct EventLoopTests {
    /// Registrations live in slots that are reused: an event the kernel reported for an fd before a
    /// handler earlier in the same batch unregistered it must not reach the slot's new owner.
    @Test func anEventForAnUnregisteredFdNeverReachesItsSlotsNextOwner() throws {
        let loop = try EventLoop()
        let a = try makePipe(nonblockingRead: true), b = try makePipe(nonblockingRead: true), c = try makePipe(nonblockingRead: true)
        defer { for p in [a, b, c] { closeFD(p.read); closeFD(p.write) } }
        // All three readable: a's and b's events come in one batch; c's only once it is registered.
        for p in [a, b, c] { try writeAll(p.write, "x") }
        var bHandle: IOHandle?
        var batchOver = false
        var cCalledInTheBatch = false
        var cCalls = 0
        var bCalls = 0
        let onA: (IOEvents) -> Void = { _ in
            // Whichever of a and b comes first unregisters the other and registers c in its slot.
            guard let h = bHandle else { return }
            loop.unregister(h)
            bHandle = nil
            _ = try? loop.register(fd: c.read, events: [.readable]) { _ in
                cCalls += 1
                if !batchOver { cCalledInTheBatch = true }
                loop.stop()
            }
            loop.schedule(after: 0) { batchOver = true }
        }
        _ = try loop.register(fd: a.read, events: [.readable], handler: onA)
        bHandle = try loop.register(fd: b.read, events: [.readable]) { _ in bCalls += 1 }
        loop.run()
        #expect(cCalls == 1 && !cCalledInTheBatch)
        // b may have come first in the batch (it does nothing then, a's handler still swaps); never after.
        #expect(bCalls <= 1)
    }

    @Test func aStaleHandleChangesNothing() throws {
        let loop = try EventLoop()
        let a = try makePipe(nonblockingRead: true), b = try makePipe(nonblockingRead: true)
        defer { for p in [a, b] { closeFD(p.read); closeFD(p.write) } }
        try writeAll(b.write, "x")
        let stale = try loop.register(fd: a.read, events: [.readable]) { _ in }
        loop.unregister(stale)
        var bCalls = 0
        _ = try loop.register(fd: b.read, events: [.readable]) { _ in
            bCalls += 1
            loop.stop()
        }
        // b took a's slot; the old handle must neither stop it being watched nor unregister it.
        loop.modify(stale, events: [])
        loop.unregister(stale)
        loop.run()
        #expect(bCalls == 1)
    }
}
