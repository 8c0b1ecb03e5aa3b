import Testing
@testable import PMLCore

@Suite struct AppSpecOptionsTests {
    let parser = AppSpecParser(file: "/srv/app.lua", source: nil, baseDirectory: "/srv", cpuCount: 4)

    func parse(_ extra: [String: ScriptValue]) throws -> AppSpec {
        var t: [String: ScriptValue] = ["name": .string("web"), "cmd": .array([.string("node"), .string("server.js")])]
        for (k, v) in extra { t[k] = v }
        return try parser.parseApp(.object(t))
    }

    func failure(_ extra: [String: ScriptValue]) -> String {
        do {
            _ = try parse(extra)
            return "no error"
        } catch {
            return "\(error)"
        }
    }

    @Test func defaultsLeaveEverythingOff() throws {
        let s = try parse([:])
        #expect(s.watch == nil && s.outFile == nil && s.errorFile == nil && s.logFile == nil && s.pidFile == nil)
        #expect(s.mergeLogs && s.autostart && s.user == nil && s.group == nil)
        #expect(s.maxMemoryRestart == nil && s.cronRestart == nil && s.expBackoffRestartDelay == nil)
        #expect(s.instanceVar == "NODE_APP_INSTANCE" && s.incrementVar == nil && s.filterEnv.isEmpty)
    }

    @Test func logPathsAreRelativeToTheAppFileFolder() throws {
        let s = try parse(["out_file": .string("logs/out.log"), "error_file": .string("/var/log/web.err"),
                           "log_file": .string("./all.log"), "pid_file": .string("run/web.pid"),
                           "log_type": .string("json"), "merge_logs": .bool(false)])
        #expect(s.outFile == "/srv/logs/out.log")
        #expect(s.errorFile == "/var/log/web.err")
        #expect(s.logFile == "/srv/all.log")
        #expect(s.pidFile == "/srv/run/web.pid")
        #expect(s.logFormat == "json")
        #expect(!s.mergeLogs)
        #expect(s.perInstance("/srv/logs/out.log", instance: 2) == "/srv/logs/out-2.log")
        #expect(s.perInstance("/srv/logs/out", instance: 1) == "/srv/logs/out-1")
        #expect(s.pidFile(instance: 0) == "/srv/run/web.pid") // one instance: as written
        let disabled = try parse(["disable_logs": .bool(true), "out_file": .string("x.log")])
        #expect(disabled.outFile == "/dev/null" && disabled.errorFile == "/dev/null")
        #expect(failure(["out_file": .bool(true)]).contains("\"out_file\" must be a file path"))
        #expect(failure(["log_type": .string("xml")]).contains("\"log_type\" must be \"json\""))
    }

    @Test func watchTakesTrueAPathOrAList() throws {
        #expect(try parse(["watch": .bool(true)]).watch == WatchSpec(paths: ["/srv"], ignore: ["node_modules", ".git"], delayMs: 1000))
        let w = try parse(["watch": .array([.string("src"), .string("/etc/web.conf")]), "cwd": .string("app"),
                           "ignore_watch": .array([.string("*.tmp")]), "watch_delay": .int(300)]).watch
        #expect(w == WatchSpec(paths: ["/srv/app/src", "/etc/web.conf"], ignore: ["node_modules", ".git", "*.tmp"], delayMs: 300))
        #expect(try parse(["watch": .bool(false)]).watch == nil)
        #expect(failure(["watch": .int(3)]).contains("\"watch\" must be true, a path or a list of paths"))
        #expect(failure(["watch": .bool(true), "watch_delay": .int(-1)]).contains("watch_delay"))
    }

    @Test func usersMemoryCronAndBackoff() throws {
        let s = try parse(["uid": .string("nobody"), "gid": .int(65534), "max_memory_restart": .string("200M"),
                           "cron_restart": .string("*/5 * * * *"), "exp_backoff_restart_delay": .int(100)])
        #expect(s.user == "nobody" && s.group == "65534")
        #expect(s.maxMemoryRestart == 200 * 1024 * 1024)
        #expect(s.cronRestart == "*/5 * * * *")
        #expect(s.expBackoffRestartDelay == 100)
        #expect(failure(["uid": .bool(true)]).contains("a user name or number"))
        #expect(failure(["max_memory_restart": .string("lots")]).contains("max_memory_restart"))
        #expect(failure(["cron_restart": .string("61 * * * *")]).contains("minute field \"61\": out of range 0-59"))
        #expect(failure(["exp_backoff_restart_delay": .int(0)]).contains("exp_backoff_restart_delay"))
    }

    @Test func byteSizes() {
        #expect(AppSpecParser.byteSize(.int(1_048_576)) == 1_048_576)
        #expect(AppSpecParser.byteSize(.string("512K")) == 512 * 1024)
        #expect(AppSpecParser.byteSize(.string("1G")) == 1 << 30)
        #expect(AppSpecParser.byteSize(.string("1.5gb")) == 3 << 29)
        #expect(AppSpecParser.byteSize(.string("200")) == 200)
        for bad: ScriptValue in [.string(""), .string("M"), .string("-5M"), .string("1e3"), .int(0), .string("9999999T")] {
            #expect(AppSpecParser.byteSize(bad) == nil, "\(bad)")
        }
    }

    @Test func workerEnvironment() throws {
        let s = try parse(["env": .object(["PORT": .string("3000"), "A": .string("app")]), "increment_var": .string("PORT"),
                           "instance_var": .string("INSTANCE_ID"), "filter_env": .array([.string("SECRET_")])])
        let env = s.workerEnvironment(inherited: ["SECRET_KEY": "x", "HOME": "/root", "A": "client"], instance: 2)
        #expect(env == ["HOME": "/root", "A": "app", "PORT": "3002", "INSTANCE_ID": "2"])
        let all = try parse(["filter_env": .bool(true)]).workerEnvironment(inherited: ["HOME": "/root"], instance: 0)
        #expect(all == ["NODE_APP_INSTANCE": "0"])
        #expect(try parse(["autostart": .bool(false)]).autostart == false)
    }
}

@Suite struct CronScheduleTests {
    func t(_ y: Int, _ mo: Int, _ d: Int, _ h: Int, _ mi: Int, _ s: Int) -> CivilTime {
        CivilTime(year: y, month: mo, day: d, hour: h, minute: mi, second: s)
    }

    @Test func nextTimes() throws {
        #expect(try CronSchedule("*/5 * * * *").next(after: t(2026, 11, 30, 5, 3, 12)) == t(2026, 11, 30, 5, 5, 0))
        #expect(try CronSchedule("0 3 * * *").next(after: t(2026, 12, 31, 4, 0, 0)) == t(2027, 1, 1, 3, 0, 0))
        #expect(try CronSchedule("*/2 * * * * *").next(after: t(2026, 11, 30, 5, 3, 59)) == t(2026, 11, 30, 5, 4, 0))
        #expect(try CronSchedule("@hourly").next(after: t(2026, 11, 30, 5, 0, 0)) == t(2026, 11, 30, 6, 0, 0))
        // 2026-11-30 is a Monday; "1-5" is Monday to Friday, 7 is Sunday.
        #expect(t(2026, 11, 30, 0, 0, 0).weekday == 1)
        #expect(try CronSchedule("30 4 * * 7").next(after: t(2026, 11, 30, 0, 0, 0)) == t(2026, 12, 6, 4, 30, 0))
        // Both day fields restricted: either matches (the 1st, or a Friday).
        #expect(try CronSchedule("0 0 1 * 5").next(after: t(2026, 11, 30, 0, 0, 0)) == t(2026, 12, 1, 0, 0, 0))
        #expect(try CronSchedule("0 0 29 2 *").next(after: t(2026, 3, 1, 0, 0, 0)) == t(2028, 2, 29, 0, 0, 0))
        #expect(try CronSchedule("0 0 30 2 *").next(after: t(2026, 3, 1, 0, 0, 0)) == nil)
    }

    @Test func badExpressionsSayWhy() {
        for (expr, why) in [("* * *", "expected 5 fields"), ("*/0 * * * *", "step"), ("5-1 * * * *", "out of range"),
                            ("x * * * *", "minute field"), ("* * * 13 *", "month field")] {
            do {
                _ = try CronSchedule(expr)
                Issue.record("\(expr) parsed")
            } catch {
                #expect(error.description.contains(why), "\(expr): \(error)")
            }
        }
    }
}

@Suite struct GlobPatternTests {
    func ignored(_ pattern: String, _ relative: String) -> Bool {
        GlobPattern(pattern).matches(relativePath: relative, absolutePath: "/srv/" + relative)
    }

    @Test func componentsPathsAndStars() {
        #expect(ignored("node_modules", "node_modules/x/index.js"))
        #expect(ignored("node_modules", "lib/node_modules"))
        #expect(!ignored("node_modules", "src/node_modules_old.js"))
        #expect(ignored("*.log", "logs/web-out.log"))
        #expect(!ignored("*.log", "logs/web.log.js"))
        #expect(ignored("logs/**", "logs/a/b.txt"))
        #expect(!ignored("logs/*", "logs/a/b.txt"))
        #expect(ignored("src/**/*.tmp", "src/a/b/c.tmp"))
        #expect(ignored("src/**/*.tmp", "src/c.tmp"))
        #expect(ignored("./tmp/", "tmp"))
        #expect(ignored("/srv/data", "data"))
        #expect(ignored("file?.txt", "file1.txt"))
        #expect(!ignored("file?.txt", "file10.txt"))
    }
}

@Suite struct ReloadOptionsTests {
    @Test func parsesAndRefuses() throws {
        #expect(try ReloadOptions.parse(.null) == ReloadOptions())
        #expect(try ReloadOptions.parse(.object(["graceful": .bool(true), "parallel": .int(3)])) == ReloadOptions(graceful: true, parallel: 3))
        for (bad, why) in [(ScriptValue.object(["paralel": .int(2)]), "unknown option \"paralel\""),
                           (.object(["parallel": .int(0)]), "parallel must be a whole number from 1 to 1024"),
                           (.object(["parallel": .double(1.5)]), "parallel must be"),
                           (.object(["graceful": .string("yes")]), "graceful must be true or false"),
                           (.string("fast"), "options must be a table")] {
            do {
                _ = try ReloadOptions.parse(bad)
                Issue.record("\(bad) parsed")
            } catch {
                #expect(error.description.contains(why), "\(error)")
            }
        }
    }
}
