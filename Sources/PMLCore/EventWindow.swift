/// Counts events in fixed windows of time, to tell a sustained flood from a one-off (malformed
/// lines on a worker's IPC channel: a few are logged and dropped, a flood stops the worker).
public struct EventWindow: Sendable, Equatable {
    /// More events than this within one window is a flood.
    public let limit: Int
    public let windowMs: Int
    private var startMs: Int?
    private var count = 0

    public init(limit: Int, windowMs: Int) {
        self.limit = limit
        self.windowMs = windowMs
    }

    /// Records one event at `nowMs` (a monotonic clock): the events in its window so far, and
    /// whether they are more than `limit`. A window starts at its first event.
    public mutating func record(atMs nowMs: Int) -> (count: Int, flood: Bool) {
        if let start = startMs, nowMs >= start, nowMs - start < windowMs {
            count += 1
        } else {
            startMs = nowMs
            count = 1
        }
        return (count, count > limit)
    }
}
