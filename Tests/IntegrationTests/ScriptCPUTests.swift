// Script threads take the CPU only when the apps leave it (issue 9: while a hook loops at its budget
// an rr app's p99 stays as it was). With autogroup scheduling a thread's nice 19 was not enough:
// the daemon's group weighed as much as each worker's. Every script thread now runs, from its
// start, in a cgroup that weighs little (cgroup v1 cpu, as root), else as SCHED_IDLE; its budgets
// count its own CPU time.

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// What the kernel says about one thread of a process.
enum ThreadInfo {
    /// The ids of `pid`'s threads called `name`.
    static func threads(of pid: Int32, named name: String) -> [Int32] {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        return tasks.compactMap(Int32.init).filter { tid in
            let comm = (try? String(contentsOfFile: "/proc/\(pid)/task/\(tid)/comm", encoding: .utf8)) ?? ""
            return comm.trimmingCharacters(in: .whitespacesAndNewlines) == name
        }
    }

    /// The cgroup path of the v1 hierarchy with the cpu controller ("/pml-scripts"), or nil.
    static func cpuCgroup(_ procCgroupFile: String) -> String? {
        let text = (try? String(contentsOfFile: procCgroupFile, encoding: .utf8)) ?? ""
        for line in text.split(separator: "\n") {
            let f = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            if f.count == 3, f[1].split(separator: ",").contains("cpu") { return String(f[2]) }
        }
        return nil
    }

    /// Nanoseconds a thread (or process) has run on a CPU (first field of schedstat).
    static func cpuNs(_ taskDir: String) -> UInt64 {
        let text = (try? String(contentsOfFile: taskDir + "/schedstat", encoding: .utf8)) ?? ""
        return text.split(separator: " ").first.flatMap { UInt64($0) } ?? 0
    }

    /// Keeps a thread (or process) on CPU 0 only.
    static func pinToCPU0(_ tid: Int32) throws -> Bool {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/taskset")
        p.arguments = ["-p", "-c", "0", "\(tid)"]
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        return p.terminationStatus == 0
    }

    /// The scheduling policy (field 41 of stat: 0 normal, 5 SCHED_IDLE).
    static func policy(_ taskDir: String) -> Int? {
        let text = (try? String(contentsOfFile: taskDir + "/stat", encoding: .utf8)) ?? ""
        // Fields after the command's closing parenthesis start at field 3.
        guard let close = text.lastIndex(of: ")") else { return nil }
        let rest = text[text.index(after: close)...].split(separator: " ")
        return rest.count > 38 ? Int(rest[38]) : nil
    }
}

extension Integration {
    @Suite("Script threads yield the CPU to the apps")
    struct ScriptCPUPlacement {
        @Test("every script thread runs in the scripts' cgroup (else SCHED_IDLE) from its start, the supervisor's does not; a hook looping at its budget gets a small part of the CPU it shares with a spinning worker")
        func scriptThreadsYield() async throws {
            try await withSandbox { box in
                try await box.pmlOK("start", "--name", "spin", "--", "sh", "-c", "while :; do :; done")
                let spin = try #require(try await box.waitOnline("spin").first?.pid)
                let calm = try box.write("calm.lua", """
                    return { name = "calm", cmd = { "sleep", "1000" },
                      onStart = function() pml.every(50, function() pml.log("CALM-TICK") end) end }
                    """)
                try await box.pmlOK("start", calm)
                try await box.waitForDaemonLine("CALM-TICK")
                let daemon = try #require(box.daemonPid)
                let calmThreads = ThreadInfo.threads(of: daemon, named: "pml-lua")
                #expect(calmThreads.count >= 1, "script threads are named pml-lua")
                let loop = try box.write("loop.lua", """
                    return { name = "loop", cmd = { "sleep", "1000" },
                      onStart = function() pml.every(10, function() while true do end end) end }
                    """)
                try await box.pmlOK("start", loop)
                let busy = try await box.waitFor("the loop's own pml-lua thread") {
                    ThreadInfo.threads(of: daemon, named: "pml-lua").first { !calmThreads.contains($0) }
                }
                let taskDir = "/proc/\(daemon)/task/\(busy)"
                let all = calmThreads + [busy]

                // As root under cgroup v1 (this machine, CI): a child of the cgroup the daemon inherited.
                if let own = ThreadInfo.cpuCgroup("/proc/self/cgroup"), geteuid() == 0 {
                    let expected = (own == "/" ? "" : own) + "/pml-scripts"
                    // The thread places itself first thing; the calm one was placed long ago.
                    _ = try await box.waitFor("the looping thread in \(expected)", timeout: 10) {
                        ThreadInfo.cpuCgroup(taskDir + "/cgroup") == expected ? true : nil
                    }
                    for tid in all {
                        #expect(ThreadInfo.cpuCgroup("/proc/\(daemon)/task/\(tid)/cgroup") == expected, "script thread \(tid) runs in \(expected)")
                    }
                    #expect(ThreadInfo.cpuCgroup("/proc/\(daemon)/cgroup") == own, "the supervisor's thread stays")
                    #expect(ThreadInfo.cpuCgroup("/proc/\(spin)/cgroup") == own, "so do the workers")
                    let said = box.daemonLines("script threads (pml-lua) get the CPU the apps leave")
                    #expect(said.count == 1 && said[0].contains("they run in the cpu cgroup /") && said[0].hasSuffix("\(expected) (cpu.shares 256)"), "daemon.log: \(said)")
                } else {
                    _ = try await box.waitFor("the looping thread SCHED_IDLE", timeout: 10) { ThreadInfo.policy(taskDir) == 5 ? true : nil }
                    for tid in all { #expect(ThreadInfo.policy("/proc/\(daemon)/task/\(tid)") == 5) }
                    #expect(ThreadInfo.policy("/proc/\(daemon)") == 0, "the supervisor's thread stays")
                }

                // On one CPU with a spinning worker, the looping script gets about a fifth of it, 256 against 1024 (it
                // got about half at nice 19: the daemon's autogroup weighed as much as the worker's).
                for pid in [busy, spin] { #expect(try ThreadInfo.pinToCPU0(pid), "taskset -p -c 0 \(pid)") }
                await sleepMs(200)
                let s0 = ThreadInfo.cpuNs(taskDir), w0 = ThreadInfo.cpuNs("/proc/\(spin)")
                await sleepMs(3000)
                let script = Double(ThreadInfo.cpuNs(taskDir) - s0) / 1e6, worker = Double(ThreadInfo.cpuNs("/proc/\(spin)") - w0) / 1e6
                #expect(worker > 300, "the spinning worker ran \(worker) ms of 3000 (the script \(script) ms)")
                #expect(script < worker * 0.5, "the looping script ran \(script) ms, the worker \(worker) ms on the same CPU")
                #expect(box.daemonPid == daemon)
            }
        }
    }
}
