import Logging
import PMLPosix

/// When accept(2) runs out of descriptors (EMFILE, ENFILE) the connection stays pending and the
/// listening socket readable: level-triggered, it would wake the loop at once, forever (100 % CPU).
/// The listener leaves the loop for `retryMs` instead, then comes back; one line a minute says so.
final class AcceptBackoff {
    static let retryMs = 100
    private let loop: EventLoop
    private let logger: Logger
    private let what: String
    private var lastLogMs: Int?

    init(loop: EventLoop, logger: Logger, what: String) {
        self.loop = loop
        self.logger = logger
        self.what = what
    }

    /// Call when accept answered nil: if it ran out of descriptors, stops watching `handle` and
    /// calls `resume` after retryMs (which watches it again if it should). True if it paused.
    @discardableResult
    func pauseIfOutOfDescriptors(_ handle: IOHandle?, resume: @escaping () -> Void) -> Bool {
        guard UnixSocket.acceptRanOutOfDescriptors(), let handle else { return false }
        pause(handle, resume: resume)
        return true
    }

    /// Stops watching `handle` and calls `resume` after retryMs: for a caller that saw
    /// `UnixSocket.acceptRanOutOfDescriptors()` itself (and makes `resume` only then).
    func pause(_ handle: IOHandle, resume: @escaping () -> Void) {
        loop.modify(handle, events: [])
        let now = monotonicMs()
        if lastLogMs.map({ now - $0 >= 60_000 }) ?? true {
            lastLogMs = now
            logger.warning("\(what): out of file descriptors (limit \(openFileLimit())); accepting again every \(Self.retryMs) ms")
        }
        loop.schedule(after: Self.retryMs, resume)
    }
}
