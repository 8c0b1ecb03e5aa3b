import Glibc
import PMLCore
import PMLPosix

/// Where script threads take their CPU from. A script looping at its budget or stuck in a C call
/// must not slow the apps, but a thread's nice only ranks it among the tasks of its own scheduling
/// group: with autogroup scheduling every worker (a session of its own) is a group weighing as much
/// as the whole daemon, so a busy script thread at nice 19 still took its share of a core from them.
/// A task in a non-root cpu cgroup is scheduled in that cgroup instead: every script thread runs,
/// from its start, in a child cgroup of the daemon's that weighs little; elsewhere it is
/// SCHED_IDLE, which ranks it below every task of its group (the daemon and its workers, under
/// cgroup v2). Scripts' budgets count their own CPU time, so waiting for the CPU costs them none.
enum ScriptCPU {
    /// Where script threads run; decided once per daemon, when the script hub starts.
    enum Placement: Sendable, Equatable {
        /// This cgroup v1 folder: a child of the daemon's cpu cgroup (shared by the pml daemons in it).
        case cgroup(String)
        /// SCHED_IDLE in the daemon's own group, for this reason.
        case idlePolicy(reason: String)

        /// For daemon.log.
        var sentence: String {
            let who = "script threads (\(ScriptThread.threadName)) get the CPU the apps leave"
            switch self {
            case .cgroup(let dir): return "\(who): they run in the cpu cgroup \(dir) (cpu.shares \(ScriptCPU.shares))"
            case .idlePolicy(let reason): return "\(who): they run as SCHED_IDLE threads (no cgroup of their own: \(reason))"
            }
        }
    }

    static let groupName = "pml-scripts"
    /// The scripts cgroup's weight (a sibling process group weighs 1024). On 2 saturated cores here
    /// cpu.idle (weight 3) delayed a 0.1 ms wake-up of a thread in it by 300 ms (p99), 64 by 10 ms;
    /// at 64 scripts got so little that a reload's evaluation of its app file under an rr load
    /// missed 30 s. 256 leaves them about a fifth of a core against one busy worker.
    static let shares = 256
    /// Computed on first use, once per process.
    static let placement: Placement = prepare()

    private static func prepare() -> Placement {
        guard let cgroup = readFile("/proc/self/cgroup"), let mountinfo = readFile("/proc/self/mountinfo"),
              let own = CPUCgroup.v1Directory(procCgroup: String(decoding: cgroup, as: UTF8.self),
                                              mountinfo: String(decoding: mountinfo, as: UTF8.self)) else {
            return .idlePolicy(reason: "no cgroup v1 cpu controller")
        }
        // Only the leaf is made, inside a folder that must already be a cgroup v1 one: a path that
        // left the tree, or missing levels, would otherwise be created as folders or cgroups.
        let dir = own + "/" + groupName
        do {
            guard try folderFilesystemType(own) == CgroupMagic.v1 else { return .idlePolicy(reason: "\(own) is not a cgroup v1 folder") }
            try makeDirectory(dir, mode: 0o755)
            guard try folderFilesystemType(dir) == CgroupMagic.v1 else { return .idlePolicy(reason: "\(dir) is not a cgroup v1 folder") }
            try writeControlFile(dir + "/cpu.shares", "\(shares)")
            return .cgroup(dir)
        } catch {
            return .idlePolicy(reason: "\(error)")
        }
    }

    /// Moves thread `tid` of this process where `placement` says. Returns why it could not (it is
    /// then SCHED_IDLE if that worked), nil when it is placed.
    static func place(tid: Int32) -> String? {
        if case .cgroup(let dir) = placement {
            do {
                try writeControlFile(dir + "/tasks", "\(tid)")
                return nil
            } catch {
                try? setThreadIdle(tid)
                return "cannot join the cpu cgroup \(dir) (\(error)); SCHED_IDLE instead"
            }
        }
        do {
            try setThreadIdle(tid)
            return nil
        } catch {
            return "cannot become SCHED_IDLE (\(error)); nice \(ScriptThread.nice) only"
        }
    }
}
