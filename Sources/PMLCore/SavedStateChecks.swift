/// state.json and dump.json are files anyone with the user's rights can edit: every number a
/// daemon reads back from them is checked before use, so a tampered or corrupt file can neither
/// trap the daemon (an id of Int.max plus one) nor stall it (a backoff loop of Int.max steps).
extension SavedState {
    /// Worker ids pml takes back (it hands them out from 0 up, so this is never reached).
    public static let maxWorkerID = Int(Int32.max)
    /// Restart and connection counters are clamped to this.
    public static let maxCount = 1 << 40
    /// Past this many doublings every restart delay is at its cap already.
    public static let maxBackoffStep = 1000
    /// Apps taken back from one file: the rest are left out (each app is started in turn).
    public static let maxApps = 1000

    /// This state with each number checked against what pml could have written at `nowMs`
    /// (CLOCK_MONOTONIC): counters and start times are clamped, a worker record whose id, instance
    /// or pid is impossible (or whose id another record has) is left out, an impossible slot or
    /// port is dropped; an app whose name an earlier one has, and every app past `maxApps`, is
    /// left out. `problems`: one line for each change, for daemon.log.
    public func checked(nowMs: Int) -> (state: SavedState, problems: [String]) {
        var out = self
        var problems: [String] = []
        var names = Set<String>()
        var repeated = 0
        out.apps = apps.filter { app in
            if names.insert(app.name).inserted { return true }
            repeated += 1
            return false
        }
        if repeated > 0 { problems.append("\(repeated) app record(s) repeating an earlier app's name left out") }
        if out.apps.count > Self.maxApps {
            problems.append("\(out.apps.count) apps: the \(out.apps.count - Self.maxApps) past the first \(Self.maxApps) left out")
            out.apps.removeSubrange(Self.maxApps...)
        }
        if let p = daemonPID, p <= 0 { out.daemonPID = nil; problems.append("daemon_pid \(p) is not a pid; ignored") }
        if let p = keeperPID, p <= 0 { out.keeperPID = nil; problems.append("keeper_pid \(p) is not a pid; ignored") }
        var ids = Set<Int>()
        var tags = Set<String>()
        for (a, app) in out.apps.enumerated() {
            if var workers = app.workers {
                if workers.count > CheckedNumber.maxInstances {
                    problems.append("\(app.name): \(workers.count) worker records: the ones past the first \(CheckedNumber.maxInstances) left out")
                    workers.removeSubrange(CheckedNumber.maxInstances...)
                }
                out.apps[a].workers = workers.compactMap { w in
                    let (checked, problem) = w.checked(nowMs: nowMs, takenIDs: ids)
                    if let problem { problems.append("\(app.name): \(problem)") }
                    if let checked { ids.insert(checked.id) }
                    return checked
                }
            }
            if let listeners = app.listeners {
                out.apps[a].listeners = listeners.compactMap { l in
                    guard KeeperTag.isListener(l.tag), tags.insert(l.tag).inserted else {
                        problems.append("\(app.name): listener tag \(String(l.tag.prefix(40)).debugDescription) is not one pml writes, or appears twice; listener left out")
                        return nil
                    }
                    var l = l
                    if let port = l.requestedPort, !(0...65535).contains(port) {
                        l.requestedPort = nil
                        problems.append("\(app.name): listener \(l.tag): requested_port \(port) is not a port; ignored")
                    }
                    if let slots = l.slots, slots.contains(where: { !(0..<CheckedNumber.maxInstances).contains($0) }) {
                        l.slots = slots.filter { (0..<CheckedNumber.maxInstances).contains($0) }
                        problems.append("\(app.name): listener \(l.tag): slots outside 0..<\(CheckedNumber.maxInstances) dropped")
                    }
                    return l
                }
            }
        }
        return (out, problems)
    }
}

extension SavedWorker {
    /// This record checked (see `SavedState.checked`), or nil if it cannot be taken back; and
    /// what was wrong with it, if anything.
    public func checked(nowMs: Int, takenIDs: Set<Int> = []) -> (SavedWorker?, String?) {
        guard (0...SavedState.maxWorkerID).contains(id) else {
            return (nil, "worker id \(id) is outside 0...\(SavedState.maxWorkerID); record refused")
        }
        guard !takenIDs.contains(id) else { return (nil, "worker id \(id) appears twice; record refused") }
        guard (0..<CheckedNumber.maxInstances).contains(instance) else {
            return (nil, "worker \(id): instance \(instance) is outside 0..<\(CheckedNumber.maxInstances); record refused")
        }
        guard pid > 0 else { return (nil, "worker \(id): pid \(pid) is not a pid; record refused") }
        var w = self
        var fixed: [String] = []
        func clamp(_ value: inout Int, _ name: String, _ range: ClosedRange<Int>) {
            guard !range.contains(value) else { return }
            fixed.append("\(name) \(value)")
            value = min(max(value, range.lowerBound), range.upperBound)
        }
        clamp(&w.startedAtMs, "started_at_ms", 0...max(0, nowMs))
        clamp(&w.restarts, "restarts", 0...SavedState.maxCount)
        clamp(&w.unstableRestarts, "unstable_restarts", 0...SavedState.maxCount)
        clamp(&w.backoffStep, "backoff_step", 0...SavedState.maxBackoffStep)
        clamp(&w.dispatched, "dispatched", 0...SavedState.maxCount)
        return (w, fixed.isEmpty ? nil : "worker \(id): \(fixed.joined(separator: ", ")) out of range; clamped")
    }
}
