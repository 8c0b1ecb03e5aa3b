import CSystemShim
import Glibc

/// Readiness events an fd handler is told about.
public struct IOEvents: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let readable = IOEvents(rawValue: UInt32(PML_EPOLLIN))
    public static let writable = IOEvents(rawValue: UInt32(PML_EPOLLOUT))
    /// Error or hang-up: the handler should read to EOF or close.
    public static let hangup = IOEvents(rawValue: UInt32(PML_EPOLLHUP | PML_EPOLLERR | PML_EPOLLRDHUP))
}

/// Identifies a registered fd handler.
public struct IOHandle: Hashable, Sendable { let id: UInt64 }

/// Identifies a scheduled timer.
public struct TimerHandle: Hashable, Sendable { let id: UInt64 }

/// A single-threaded epoll loop with timers. Everything pml's supervisor does happens in
/// its callbacks, on the thread that calls `run()`, which is also the thread that owns Lua.
public final class EventLoop {
    private struct Registration {
        /// Its handle's id, also its epoll data: the slot in the low 32 bits, a count of
        /// registrations in the high ones (`slotOf`).
        var id: UInt64
        var fd: Int32
        var handler: (IOEvents) -> Void
    }

    private struct Timer {
        /// On CLOCK_MONOTONIC, in µs: an accept hold is a few hundred µs.
        var deadline: Int
        var id: UInt64
    }

    private let epfd: Int32
    /// By slot: each event finds its handler by index, not by hashing (this runs for every event).
    /// A freed slot goes to the next registration, under a new id: an event reported for the fd
    /// before it was unregistered (later in the same batch) never reaches the slot's next owner.
    private var registrations: [Registration?] = []
    private var freeSlots: [Int] = []
    private var registrationCount: UInt32 = 0
    private var timers: [Timer] = []           // sorted by (deadline, id)
    private var timerActions: [UInt64: () -> Void] = [:]
    private var nextID: UInt64 = 1
    private var running = false

    /// Whether timeouts are kept to the microsecond (the kernel takes epoll_pwait2); if not, they
    /// round up to whole milliseconds. Asked of the kernel once.
    public static let microsecondTimeouts = pml_epoll_microseconds() != 0

    public init() throws(SystemError) {
        epfd = try sys("epoll_create1") { pml_epoll_create() }
    }

    deinit { closeFD(epfd) }

    /// Calls `handler` whenever `fd` is ready for `events` (level-triggered).
    @discardableResult
    public func register(fd: Int32, events: IOEvents, handler: @escaping (IOEvents) -> Void) throws(SystemError) -> IOHandle {
        let slot = freeSlots.last ?? registrations.count
        // Wraps after 2^32 registrations: a stale event would need that many in one batch.
        registrationCount &+= 1
        let id = UInt64(registrationCount) << 32 | UInt64(slot)
        try sys("epoll_ctl add") { pml_epoll_add(epfd, fd, events.rawValue, id) }
        if slot == registrations.count { registrations.append(nil) } else { freeSlots.removeLast() }
        registrations[slot] = Registration(id: id, fd: fd, handler: handler)
        return IOHandle(id: id)
    }

    /// The slot of the registration `id` names, if it is still registered.
    private func slotOf(_ id: UInt64) -> Int? {
        let slot = Int(truncatingIfNeeded: id & 0xFFFF_FFFF)
        return slot < registrations.count && registrations[slot]?.id == id ? slot : nil
    }

    /// Changes the events a registered fd is watched for.
    public func modify(_ handle: IOHandle, events: IOEvents) {
        guard let slot = slotOf(handle.id), let r = registrations[slot] else { return }
        _ = pml_epoll_mod(epfd, r.fd, events.rawValue, handle.id)
    }

    /// Stops watching; call before closing the fd. Pending events for it are dropped.
    public func unregister(_ handle: IOHandle) {
        guard let slot = slotOf(handle.id), let r = registrations[slot] else { return }
        registrations[slot] = nil
        freeSlots.append(slot)
        _ = pml_epoll_del(epfd, r.fd)
    }

    /// Runs `action` once, `ms` milliseconds from now.
    @discardableResult
    public func schedule(after ms: Int, _ action: @escaping () -> Void) -> TimerHandle {
        let (us, overflow) = max(0, ms).multipliedReportingOverflow(by: 1000)
        return schedule(afterUs: overflow ? Int.max : us, action)
    }

    /// Runs `action` once, `us` microseconds from now.
    @discardableResult
    public func schedule(afterUs us: Int, _ action: @escaping () -> Void) -> TimerHandle {
        let id = nextID
        nextID += 1
        // Callers bound their delays; this only makes sure no delay can overflow the deadline.
        let (deadline, overflow) = monotonicUs().addingReportingOverflow(max(0, us))
        let timer = Timer(deadline: overflow ? Int.max : deadline, id: id)
        var lo = 0, hi = timers.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if timers[mid].deadline <= timer.deadline { lo = mid + 1 } else { hi = mid }
        }
        timers.insert(timer, at: lo)
        timerActions[id] = action
        return TimerHandle(id: id)
    }

    /// Cancels a timer that has not fired yet (no-op otherwise).
    public func cancel(_ timer: TimerHandle) {
        if timerActions.removeValue(forKey: timer.id) != nil {
            timers.removeAll { $0.id == timer.id }
        }
    }

    /// Runs until `stop()` is called from a callback.
    public func run() {
        running = true
        var events = [pml_epoll_event](repeating: pml_epoll_event(), count: 64)
        while running {
            let now = runDueTimers()
            if !running { break }
            let timeout = timers.first.map { Int64(max(0, $0.deadline - (now ?? monotonicUs()))) } ?? -1
            let n = events.withUnsafeMutableBufferPointer { pml_epoll_wait(epfd, $0.baseAddress, 64, timeout) }
            if n < 0 { continue } // EINTR
            for i in 0..<Int(n) {
                let ev = events[i]
                guard let slot = slotOf(ev.data), let r = registrations[slot] else { continue }
                r.handler(IOEvents(rawValue: ev.events))
            }
        }
    }

    /// Makes `run()` return after the current callback.
    public func stop() { running = false }

    /// Runs the timers that are due. Returns the time it read if none ran (still the time now: the
    /// wait's timeout needs no second clock read), nil if some did (they took time).
    private func runDueTimers() -> Int? {
        let now = monotonicUs()
        var ran = false
        while let first = timers.first, first.deadline <= now {
            timers.removeFirst()
            ran = true
            if let action = timerActions.removeValue(forKey: first.id) { action() }
        }
        return ran ? nil : now
    }
}
