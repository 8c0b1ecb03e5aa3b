// `pml monit` (a live dashboard in a real terminal: tmux) and `pml metrics` (Prometheus text that
// agrees with `pml ls --json`).

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A private tmux server (its own socket, no user config) for driving `pml monit` in a real terminal.
private struct Tmux {
    let socket = "pml-it-mm-" + String(UInt64.random(in: 0..<UInt64(1) << 40), radix: 36)

    static let path: String? = ["/usr/bin/tmux", "/usr/local/bin/tmux", "/bin/tmux"]
        .first { FileManager.default.isExecutableFile(atPath: $0) }

    /// Runs tmux and waits for it (at most 10 s). Not with Foundation's `Process`: the server
    /// `new-session` forks would inherit the socket `Process` watches for the child's end (and
    /// any pipe for its output), and the wait would last as long as the server. Output goes
    /// through a file; every descriptor above 2 is closed in the child.
    @discardableResult
    func run(_ args: [String]) throws -> (status: Int32, output: String) {
        guard let tmux = Tmux.path else { throw HarnessError("tmux is not installed (scripts/setup.sh installs it)") }
        let outPath = NSTemporaryDirectory() + "/\(socket)-\(UInt32.random(in: 0..<UInt32.max)).out"
        defer { unlink(outPath) }
        var env = ProcessInfo.processInfo.environment
        env["TMUX"] = nil
        env["PML_HOME"] = nil
        let argv = [tmux, "-L", socket, "-f", "/dev/null"] + args
        var cArgs = argv.map { strdup($0) } + [nil]
        var cEnv = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            cArgs.forEach { free($0) }
            cEnv.forEach { free($0) }
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        let inherited = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
        for fd in inherited.compactMap({ Int32($0) }) where fd > 2 { posix_spawn_file_actions_addclose(&actions, fd) }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, tmux, &actions, nil, &cArgs, &cEnv)
        guard rc == 0 else { throw HarnessError("cannot run tmux: \(String(cString: strerror(rc)))") }
        var status: Int32 = 0
        let deadline = nowMs() + 10_000
        while waitpid(pid, &status, WNOHANG) == 0 {
            if nowMs() > deadline {
                kill(pid, SIGKILL)
                waitpid(pid, &status, 0)
                throw HarnessError("tmux \(args.joined(separator: " ")) did not finish in 10 s")
            }
            usleep(5_000)
        }
        let output = (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? ""
        // Exited normally: the exit code (WIFEXITED / WEXITSTATUS by hand; Swift lacks the macros).
        return ((status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f), output)
    }

    /// Starts `command` (a shell command line) in a detached 160×40 session.
    func start(_ session: String, _ command: String) throws {
        let r = try run(["new-session", "-d", "-s", session, "-x", "160", "-y", "40", command])
        guard r.status == 0 else { throw HarnessError("tmux new-session failed (\(r.status)): \(r.output)") }
    }

    func screen(_ session: String) -> String {
        (try? run(["capture-pane", "-p", "-t", session]))?.output ?? ""
    }

    func keys(_ session: String, _ keys: String...) throws {
        try run(["send-keys", "-t", session] + keys)
    }

    func alive(_ session: String) -> Bool {
        (try? run(["has-session", "-t", session]))?.status == 0
    }

    func killServer() {
        _ = try? run(["kill-server"])
    }
}

/// Quotes a word for sh.
private func shq(_ s: String) -> String { "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'" }

/// One sample of Prometheus text: `name{labels} value`.
private struct Sample: CustomStringConvertible {
    let name: String
    let labels: [String: String]
    let value: Double
    var description: String { "\(name)\(labels.keys.sorted().map { "\($0)=\(labels[$0]!)" }) \(value)" }
}

/// A strict reader of the Prometheus text exposition format (0.0.4): every sample line is
/// `name{label="value",...} value` with a float value; label values use \\, \" and \n escapes;
/// every metric has a `# HELP` and a `# TYPE` line before its samples, and a family's samples are together.
private func parsePrometheus(_ text: String) throws -> (samples: [Sample], types: [String: String], help: [String: String]) {
    var samples: [Sample] = []
    var types: [String: String] = [:]
    var help: [String: String] = [:]
    var finished = Set<String>()
    var current: String?
    func isNameStart(_ c: Character) -> Bool { c.isASCII && (c.isLetter || c == "_" || c == ":") }
    func isName(_ c: Character) -> Bool { isNameStart(c) || (c.isASCII && c.isNumber) }
    func value(_ s: String) -> Double? {
        switch s {
        case "NaN": return .nan
        case "+Inf": return .infinity
        case "-Inf": return -.infinity
        default: return Double(s)
        }
    }
    for (n, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
        let line = String(raw)
        let at = "line \(n + 1): \(line)"
        if line.isEmpty { continue }
        if line.hasPrefix("#") {
            let parts = line.split(separator: " ", maxSplits: 3, omittingEmptySubsequences: false).map(String.init)
            guard parts.count >= 3, parts[0] == "#", ["HELP", "TYPE"].contains(parts[1]) else { continue }
            let name = parts[2]
            guard let f = name.first, isNameStart(f), name.allSatisfy(isName) else { throw HarnessError("bad metric name, \(at)") }
            if parts[1] == "TYPE" {
                guard parts.count == 4, ["counter", "gauge", "histogram", "summary", "untyped"].contains(parts[3]) else {
                    throw HarnessError("bad TYPE, \(at)")
                }
                guard types[name] == nil else { throw HarnessError("second TYPE for \(name), \(at)") }
                types[name] = parts[3]
            } else {
                guard help[name] == nil else { throw HarnessError("second HELP for \(name), \(at)") }
                help[name] = parts.count == 4 ? parts[3] : ""
            }
            continue
        }
        var i = line.startIndex
        while i < line.endIndex, isName(line[i]) { i = line.index(after: i) }
        let name = String(line[..<i])
        guard let f = name.first, isNameStart(f) else { throw HarnessError("no metric name, \(at)") }
        var labels: [String: String] = [:]
        if i < line.endIndex, line[i] == "{" {
            i = line.index(after: i)
            while true {
                guard i < line.endIndex else { throw HarnessError("unterminated labels, \(at)") }
                if line[i] == "}" { i = line.index(after: i); break }
                let start = i
                while i < line.endIndex, isName(line[i]) { i = line.index(after: i) }
                let label = String(line[start..<i])
                guard !label.isEmpty, i < line.endIndex, line[i] == "=" else { throw HarnessError("bad label name, \(at)") }
                i = line.index(after: i)
                guard i < line.endIndex, line[i] == "\"" else { throw HarnessError("label value not quoted, \(at)") }
                i = line.index(after: i)
                var v = ""
                while true {
                    guard i < line.endIndex else { throw HarnessError("unterminated label value, \(at)") }
                    let c = line[i]
                    if c == "\"" { i = line.index(after: i); break }
                    if c == "\\" {
                        i = line.index(after: i)
                        guard i < line.endIndex else { throw HarnessError("dangling escape, \(at)") }
                        switch line[i] {
                        case "\\": v.append("\\")
                        case "\"": v.append("\"")
                        case "n": v.append("\n")
                        default: throw HarnessError("bad escape \\\(line[i]), \(at)")
                        }
                    } else {
                        v.append(c)
                    }
                    i = line.index(after: i)
                }
                guard labels[label] == nil else { throw HarnessError("label \(label) twice, \(at)") }
                labels[label] = v
                guard i < line.endIndex else { throw HarnessError("unterminated labels, \(at)") }
                if line[i] == "," { i = line.index(after: i) }
            }
        }
        guard i < line.endIndex, line[i] == " " else { throw HarnessError("no space before the value, \(at)") }
        let rest = line[line.index(after: i)...].split(separator: " ").map(String.init)
        guard rest.count == 1 || rest.count == 2, let v = value(rest[0]) else { throw HarnessError("value is not a float, \(at)") }
        if rest.count == 2, Int64(rest[1]) == nil { throw HarnessError("bad timestamp, \(at)") }
        guard types[name] != nil, help[name] != nil else { throw HarnessError("sample without HELP and TYPE before it, \(at)") }
        if current != name {
            guard !finished.contains(name) else { throw HarnessError("samples of \(name) are not together, \(at)") }
            if let c = current { finished.insert(c) }
            current = name
        }
        samples.append(Sample(name: name, labels: labels, value: v))
    }
    return (samples, types, help)
}

extension Integration {
    @Suite("Monit and metrics")
    struct MonitMetrics {
        /// A worker that prints "<app>-line-N" on stdout (and every 5th line "<app>-oops-N" on stderr).
        static func chatty(_ box: Sandbox) throws -> String {
            try box.write("chatty.sh", """
                #!/bin/sh
                i=0
                while true; do
                  echo "$PML_APP-line-$i"
                  if [ $((i % 5)) -eq 0 ]; then echo "$PML_APP-oops-$i" >&2; fi
                  i=$((i + 1))
                  sleep 0.2
                done
                """, executable: true)
        }

        /// The `pml monit` process of this sandbox: its PML_HOME, argv exactly [pml, "monit"].
        static func monitPid(_ box: Sandbox) -> Int32? {
            Proc.pids(withEnvironment: "PML_HOME=\(box.home)").first { pid in
                guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
                let argv = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
                return argv.count == 2 && argv[1] == "monit"
            }
        }

        /// Terminal modes (from `stty -a`) are back to cooked: icanon, echo, isig on.
        static func expectCooked(_ stty: String, sourceLocation: SourceLocation = #_sourceLocation) {
            let words = Set(stty.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == ";" }).map(String.init))
            for flag in ["icanon", "echo", "isig"] {
                #expect(words.contains(flag) && !words.contains("-" + flag),
                        "terminal left with \(flag) off after pml monit:\n\(stty)", sourceLocation: sourceLocation)
            }
        }

        func monitCommand(_ box: Sandbox) -> String {
            "env PML_HOME=\(shq(box.home)) \(shq(box.binary)) monit; echo $? > \(shq(box.work + "/rc")); stty -a > \(shq(box.work + "/stty"))"
        }

        @Test("monit in a terminal shows every app and worker, switches logs with j/k and arrows, quits on q with 0 and a restored terminal")
        func monitInTmux() async throws {
            try await withSandbox { box in
                let script = try Self.chatty(box)
                try await box.pmlOK("start", script, "--name", "alpha", "-i", "2")
                try await box.pmlOK("start", script, "--name", "beta")
                let alpha = try await box.waitOnline("alpha", count: 2)
                let beta = try await box.waitOnline("beta")
                let tmux = Tmux()
                defer { tmux.killServer() }
                let session = "monit"
                try tmux.start(session, monitCommand(box))

                // Every app, every worker's pid, their status, and the first app's log tail.
                let first = try await box.waitFor("monit to show both apps, all pids, and alpha's logs", timeout: 10) { () -> String? in
                    let s = tmux.screen(session)
                    let words = tokens(s)
                    let pids = (alpha + beta).compactMap(\.pid).map(String.init)
                    return words.isSuperset(of: ["alpha", "beta", "online"] + pids) && s.contains("logs of alpha")
                        && s.contains("alpha-line-") && s.contains("alpha-oops-") ? s : nil
                }
                #expect(!first.contains("beta-line-"), "only the selected app's logs:\n\(first)")
                #expect(first.contains("online 2/2"), "app summary line:\n\(first)")

                // It refreshes in place: a later screen has newer log lines.
                let lastLine = { (s: String) in s.split(separator: "\n").last { $0.contains("alpha-line-") }.map(String.init) }
                let before = lastLine(first)
                try await box.waitFor("the screen to refresh with newer log lines", timeout: 5) {
                    let now = lastLine(tmux.screen(session))
                    return now != nil && now != before ? true : nil
                }

                try tmux.keys(session, "j")
                try await box.waitFor("j to select beta", timeout: 5) { () -> Bool? in
                    let s = tmux.screen(session)
                    return s.contains("logs of beta") && s.contains("beta-line-") && !s.contains("alpha-line-") ? true : nil
                }
                try tmux.keys(session, "Up")
                try await box.waitFor("the up arrow to select alpha again", timeout: 5) { () -> Bool? in
                    let s = tmux.screen(session)
                    return s.contains("logs of alpha") && s.contains("alpha-line-") ? true : nil
                }
                try tmux.keys(session, "Down")
                try await box.waitFor("the down arrow to select beta", timeout: 5) { () -> Bool? in
                    tmux.screen(session).contains("logs of beta") ? true : nil
                }

                try tmux.keys(session, "q")
                try await box.waitFor("monit to quit on q (the tmux session ends)", timeout: 5) {
                    tmux.alive(session) ? nil : true
                }
                #expect(box.read("rc").trimmingCharacters(in: .whitespacesAndNewlines) == "0", "exit status on q: \(box.read("rc"))")
                Self.expectCooked(box.read("stty"))
                #expect(Self.monitPid(box) == nil, "no pml monit left running")
                // The apps are untouched.
                #expect(try await box.ls().filter { $0.status == "online" }.count == 3)
            }
        }

        @Test("monit quits on Ctrl-C with 0, and on SIGTERM dies of it with the terminal restored")
        func monitSignals() async throws {
            try await withSandbox { box in
                try await box.pmlOK("start", "--name", "idle", "--", "sleep", "1000")
                try await box.waitOnline("idle")
                let tmux = Tmux()
                defer { tmux.killServer() }

                try tmux.start("ctrlc", monitCommand(box))
                try await box.waitFor("monit to draw", timeout: 10) { tmux.screen("ctrlc").contains("idle") ? true : nil }
                try tmux.keys("ctrlc", "C-c")
                try await box.waitFor("monit to quit on Ctrl-C", timeout: 5) { tmux.alive("ctrlc") ? nil : true }
                #expect(box.read("rc").trimmingCharacters(in: .whitespacesAndNewlines) == "0", "exit status on Ctrl-C: \(box.read("rc"))")
                Self.expectCooked(box.read("stty"))

                try? FileManager.default.removeItem(atPath: box.work + "/rc")
                try? FileManager.default.removeItem(atPath: box.work + "/stty")
                try tmux.start("term", monitCommand(box))
                try await box.waitFor("monit to draw", timeout: 10) { tmux.screen("term").contains("idle") ? true : nil }
                let pid = try await box.waitFor("the pml monit process", timeout: 5) { Self.monitPid(box) }
                kill(pid, SIGTERM)
                try await box.waitFor("monit to end on SIGTERM", timeout: 5) { tmux.alive("term") ? nil : true }
                #expect(box.read("rc").trimmingCharacters(in: .whitespacesAndNewlines) == "143", "killed by SIGTERM (128+15): \(box.read("rc"))")
                Self.expectCooked(box.read("stty"))
            }
        }

        @Test("monit without a terminal prints one snapshot and exits 0")
        func monitSnapshot() async throws {
            try await withSandbox { box in
                let script = try Self.chatty(box)
                try await box.pmlOK("start", script, "--name", "alpha", "-i", "2")
                let rows = try await box.waitOnline("alpha", count: 2)
                try await box.waitFor("alpha to log") { box.read(box.logsDir + "/alpha-out.log").contains("alpha-line-") ? true : nil }
                let r = try await box.pml("monit", timeout: 10)
                #expect(r.ok, "\(r)")
                #expect(!r.stdout.contains("\u{1b}"), "no terminal escapes in a snapshot:\n\(r.stdout)")
                let words = tokens(r.stdout)
                #expect(words.isSuperset(of: ["alpha", "online"] + rows.compactMap(\.pid).map(String.init)), "\(r.stdout)")
                #expect(r.stdout.contains("alpha-line-"), "a log tail:\n\(r.stdout)")
                #expect(r.stderr.isEmpty, "\(r)")
            }
        }

        @Test("pml ls right after a start shows every running worker's memory, before the first sample")
        func memoryShownAtOnce() async throws {
            try await withSandbox { box in
                try await box.pmlOK("start", "--name", "web", "-i", "3", "--", "sleep", "1000")
                // The first list after the start: the sampler (every second) has not run for them yet.
                let rows = try await box.ls()
                #expect(rows.count == 3, "\(rows)")
                for row in rows where row.pid != nil { #expect(row.memory > 0, "\(row)") }
                #expect(rows.contains { $0.pid != nil }, "\(rows)")
            }
        }

        @Test("metrics is Prometheus text whose per-worker values match pml ls --json")
        func metricsMatchList() async throws {
            try await withSandbox { box in
                // flaky crashes once, then stays up: restarts = 1.
                let flaky = try box.write("flaky.sh", """
                    #!/bin/sh
                    if [ ! -e \(shq(box.work + "/crashed")) ]; then touch \(shq(box.work + "/crashed")); exit 3; fi
                    exec sleep 1000
                    """, executable: true)
                // A worker reporting metrics whose names need escaping in label values.
                let reporter = try box.write("reporter.py", #"""
                    import json, os, socket, time
                    ipc = socket.socket(fileno=int(os.environ["PML_IPC_FD"]))
                    for name, value in [('q"uote', 1.5), ('back\\slash', 2), ('new\nline', 3), ('plain', 4)]:
                        ipc.sendall((json.dumps({"type": "metric", "name": name, "value": value}) + "\n").encode())
                    while True:
                        time.sleep(1)
                    """#)
                try await box.pmlOK("start", "--name", "web", "-i", "2", "--", "sleep", "1000")
                try await box.pmlOK("start", flaky, "--name", "flaky")
                try await box.pmlOK("start", "--name", "reporter", "--", "python3", reporter)
                try await box.pmlOK("start", "--name", "idle", "--", "sleep", "1000")
                try await box.waitOnline("web", count: 2)
                try await box.waitOnline("reporter")
                try await box.waitFor("flaky to restart once and stay up", timeout: 15) { () -> Bool? in
                    let r = try await box.rows("flaky")
                    return r.count == 1 && r[0].restarts == 1 && r[0].status == "online" ? true : nil
                }
                try await box.pmlOK("stop", "idle")
                try await box.waitFor("memory sampled for every running worker", timeout: 10) { () -> Bool? in
                    let rows = try await box.ls()
                    return rows.filter { $0.pid != nil }.allSatisfy { $0.memory > 0 } ? true : nil
                }
                try await box.waitFor("reporter's metrics to arrive") { () -> Bool? in
                    let (_, raw) = try await box.describe("reporter")
                    let workers = raw["workers"] as? [[String: Any]] ?? []
                    return (workers.first?["metrics"] as? [String: Any])?.count == 4 ? true : nil
                }

                // ls, metrics, ls: when both reads agree, the metrics (read in between) must too.
                let (before, r, after) = try await box.waitFor("a stable table around pml metrics") { () -> ([Row], RunResult, [Row])? in
                    let b = try await box.ls()
                    let m = try await box.pml("metrics")
                    let a = try await box.ls()
                    let key = { (rows: [Row]) in rows.map { "\($0.id) \($0.pid ?? -1) \($0.restarts) \($0.status)" } }
                    return key(b) == key(a) ? (b, m, a) : nil
                }
                #expect(r.ok, "\(r)")
                #expect(r.stderr.isEmpty, "\(r)")
                let parsed: (samples: [Sample], types: [String: String], help: [String: String])
                do { parsed = try parsePrometheus(r.stdout) } catch {
                    Issue.record("pml metrics is not Prometheus text: \(error)\n\(r.stdout)")
                    return
                }
                let samples = parsed.samples
                for name in ["pml_worker_cpu_percent", "pml_worker_memory_bytes", "pml_worker_restarts_total",
                             "pml_worker_uptime_seconds", "pml_worker_up", "pml_app_workers"] {
                    #expect(parsed.types[name] != nil && parsed.help[name] != nil, "\(name) has HELP and TYPE:\n\(r.stdout)")
                }
                #expect(parsed.types["pml_worker_restarts_total"] == "counter")
                #expect(parsed.types["pml_worker_up"] == "gauge")

                func value(_ metric: String, _ row: Row) -> Double? {
                    let matches = samples.filter {
                        $0.name == metric && $0.labels["app"] == row.name && $0.labels["id"] == String(row.id)
                            && $0.labels["instance"] == String(row.instance) && $0.labels.count == 3
                    }
                    return matches.count == 1 ? matches[0].value : nil
                }
                #expect(samples.filter { $0.name == "pml_worker_up" }.count == before.count, "one sample per worker:\n\(r.stdout)")
                for (b, a) in zip(before, after) {
                    #expect(value("pml_worker_restarts_total", b) == Double(b.restarts), "restarts of \(b):\n\(r.stdout)")
                    #expect(value("pml_worker_up", b) == (b.status == "online" ? 1 : 0), "up of \(b):\n\(r.stdout)")
                    let memory = try #require(value("pml_worker_memory_bytes", b), "memory of \(b):\n\(r.stdout)")
                    let cpu = try #require(value("pml_worker_cpu_percent", b), "cpu of \(b):\n\(r.stdout)")
                    #expect(cpu >= 0)
                    if b.pid != nil {
                        #expect(memory > 0, "running worker \(b) has memory:\n\(r.stdout)")
                        if b.memory == a.memory { #expect(memory == Double(b.memory), "memory as ls shows it for \(b):\n\(r.stdout)") }
                        if b.cpu == a.cpu { #expect(cpu == b.cpu, "cpu as ls shows it for \(b):\n\(r.stdout)") }
                        let uptime = try #require(value("pml_worker_uptime_seconds", b), "uptime of \(b):\n\(r.stdout)")
                        let lo = Double(b.uptimeMs ?? 0) / 1000, hi = Double(a.uptimeMs ?? 0) / 1000
                        #expect(uptime >= lo - 0.001 && uptime <= hi + 0.001, "uptime of \(b) between \(lo) and \(hi): \(uptime)")
                    } else {
                        #expect(memory == 0 && cpu == 0, "stopped worker \(b):\n\(r.stdout)")
                        #expect(value("pml_worker_uptime_seconds", b) == nil, "no uptime for stopped \(b):\n\(r.stdout)")
                    }
                }
                #expect(value("pml_worker_restarts_total", try #require(before.first { $0.name == "flaky" })) == 1)
                #expect(value("pml_worker_up", try #require(before.first { $0.name == "idle" })) == 0)
                for app in Set(before.map(\.name)) {
                    let s = samples.filter { $0.name == "pml_app_workers" && $0.labels == ["app": app] }
                    #expect(s.count == 1 && s.first?.value == Double(before.filter { $0.name == app }.count),
                            "pml_app_workers for \(app):\n\(r.stdout)")
                }
                // Label values come back exactly, whatever they hold.
                let reported = Dictionary(samples.filter { $0.name == "pml_worker_metric" && $0.labels["app"] == "reporter" }
                    .map { ($0.labels["name"] ?? "?", $0.value) }, uniquingKeysWith: { a, _ in a })
                #expect(reported == ["q\"uote": 1.5, "back\\slash": 2, "new\nline": 3, "plain": 4], "\(r.stdout)")
            }
        }
    }
}
