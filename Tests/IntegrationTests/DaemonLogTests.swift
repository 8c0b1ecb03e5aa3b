// daemon.log follows logrotate as the apps' logs do: once it is renamed, `pml reloadLogs` (or
// SIGUSR2, to the daemon or its keeper) sends the daemon's lines, the keeper's and those of any
// later daemon to a new daemon.log, and none to the renamed file.

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

extension Integration {
    @Suite("daemon.log is reopened with the logs")
    struct DaemonLogTests {
        @Test("daemon.log renamed, then pml reloadLogs (or SIGUSR2 to the keeper): the daemon's next lines, the keeper's and a successor's go to a new daemon.log")
        func daemonLogFollowsRotation() async throws {
            try await withSandbox { box in
                try await box.pmlOK("ping")
                let log = box.daemonLog
                #expect(rename(log, log + ".1") == 0)
                try await box.pmlOK("reloadLogs")
                try await box.pmlOK("start", "--name", "a", "--", "sleep", "1000")
                _ = try await box.waitOnline("a")
                try await box.waitFor("the daemon's lines in a new daemon.log") {
                    let text = box.read(log)
                    return text.contains("reopened the log files") && text.contains("started a (1 worker)") ? true : nil
                }
                // The keeper's own lines and a successor's (it inherits the keeper's stderr) follow too.
                let first = try #require(box.daemonPid)
                #expect(kill(first, SIGKILL) == 0)
                try await box.waitFor("the keeper's line and the successor's in the new daemon.log") {
                    let text = box.read(log)
                    return text.contains("the daemon (pid \(first)) killed by SIGKILL") && text.contains("its successor adopted 1 worker") ? true : nil
                }
                let rotated = box.read(log + ".1")
                #expect(!rotated.contains("started a") && !rotated.contains("killed by SIGKILL"), "nothing more in the renamed file:\n\(rotated.suffix(600))")

                // SIGUSR2 to the keeper (PM2's signal) does the same, then a second death.
                let keeper = try #require(box.keeperPid)
                #expect(rename(log, log + ".2") == 0)
                #expect(kill(keeper, SIGUSR2) == 0)
                try await box.waitFor("a new daemon.log after SIGUSR2") { box.read(log).contains("reopened the log files") ? true : nil }
                let second = try #require(box.daemonPid)
                #expect(second != first && kill(second, SIGKILL) == 0)
                try await box.waitFor("the keeper's line about the second death in the newest daemon.log") {
                    box.read(log).contains("the daemon (pid \(second)) killed by SIGKILL") ? true : nil
                }
                try await box.pmlOK("stop", "a")
                #expect(!box.read(log + ".2").contains("(pid \(second)) killed by SIGKILL"), "nothing more in the second renamed file")
                #expect(Proc.alive(keeper))
            }
        }
    }
}
