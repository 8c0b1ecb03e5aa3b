import ArgumentParser
import Glibc
import PMLCore
import PMLPosix

/// `pml monit`: a live dashboard of every app and worker, with the selected app's log tail.
///
/// Plain VT100 output (cursor home, erase line / erase below, bold and reverse video) on the
/// alternate screen, so it works over ssh in any terminal; raw input through termios. Signals only
/// set a flag: the loop polls stdin with a timeout, notices it, restores the terminal and then
/// dies of the signal as it would have.
struct Monit: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "A live dashboard: every app and worker (status, cpu, memory, restarts, uptime) and the selected app's logs.",
        discussion: """
        Keys: q (or Ctrl-C) quits; up/down or j/k select the app whose logs are shown.
        When stdout is not a terminal, pml monit prints one snapshot and exits.
        """)

    @Option(name: .long, help: "Seconds between refreshes.")
    var interval: Double = 1

    @OptionGroup var options: DaemonOptions

    func validate() throws {
        if !(interval >= 0.1 && interval <= 3600) { throw ValidationError("--interval must be between 0.1 and 3600 seconds") }
    }

    func run() throws {
        let source = MonitSource(client: options.client)
        // The first look starts the daemon if none runs, as every command does.
        let first = try source.fetch(autostart: true)
        guard isatty(1) == 1 else {
            Output.print(MonitView.snapshot(first, paths: options.paths))
            return
        }
        var dashboard = MonitDashboard(source: source, paths: options.paths, intervalMs: Int(interval * 1000), first: first)
        try dashboard.run()
    }
}

// MARK: - Data

/// What the dashboard shows: the process table, and each app described.
struct MonitSnapshot {
    struct App {
        var name: String
        var rows: [ProcessRow]
        var description: AppDescription?
    }

    var apps: [App] = []
    /// Why the last refresh failed (the apps are then those of the refresh before).
    var error: String?
}

struct MonitSource {
    let client: ControlClient

    func fetch(autostart: Bool) throws(CLIError) -> MonitSnapshot {
        let rows = try client.send(ControlRequest(cmd: .list), autostart: autostart).processes ?? []
        var snapshot = MonitSnapshot()
        for name in PrometheusText.appNames(rows) {
            // An app deleted between the two requests still shows, without its details.
            let d = try? client.send(ControlRequest(cmd: .describe, target: name), autostart: false).app
            snapshot.apps.append(.init(name: name, rows: rows.filter { $0.name == name }, description: d))
        }
        return snapshot
    }
}

// MARK: - Rendering

/// One screen line and how it is drawn.
struct MonitLine {
    enum Style { case plain, bold, selected }
    var text: String
    var style: Style = .plain
}

enum MonitView {
    static let helpKeys = "q quit, up/down or j/k select app"

    /// The process table: a header, then per app one summary line and one line per worker.
    /// Returns the lines and the index of each app's summary line.
    static func table(_ snapshot: MonitSnapshot, selected: String?) -> (lines: [MonitLine], appLine: [String: Int]) {
        var cells: [[String]] = [["", "app / worker", "id", "pid", "status", "cpu", "memory", "restarts", "uptime", "details"]]
        var appLine: [String: Int] = [:]
        for app in snapshot.apps {
            let running = app.rows.filter { $0.pid != nil }
            let online = app.rows.filter { $0.status == .online }.count
            let status = app.description?.status.rawValue ?? (online == app.rows.count ? "online" : "partial")
            var details: [String] = []
            if let d = app.description {
                if !d.listening.isEmpty { details.append("listening " + d.listening.joined(separator: ", ")) }
                if !d.listening.isEmpty || d.pendingConnections > 0 { details.append("pending \(d.pendingConnections)") }
                if let a = d.autoscaleDecision { details.append("autoscale: " + a) }
            }
            appLine[app.name] = cells.count
            let cpu = running.reduce(0.0) { $0 + $1.cpu }
            cells.append([
                app.name == selected ? ">" : "", app.name + " (" + (app.rows.first?.mode ?? "?") + ")", "", "",
                "\(status) \(online)/\(app.rows.count)",
                running.isEmpty ? "-" : percent(cpu), running.isEmpty ? "-" : Output.bytes(running.reduce(0) { $0 + $1.memory }),
                String(app.rows.reduce(0) { $0 + $1.restarts }), "", details.joined(separator: "; "),
            ])
            for r in app.rows.sorted(by: { $0.instance < $1.instance }) {
                let w = app.description?.workers.first { $0.row.id == r.id }
                cells.append([
                    "", "  [\(r.instance)]", String(r.id), r.pid.map { String($0) } ?? "-", r.status.rawValue,
                    r.pid == nil ? "-" : percent(r.cpu), r.pid == nil ? "-" : Output.bytes(r.memory),
                    String(r.restarts), r.uptimeMs.map(Output.duration) ?? "-", w.map(workerDetails) ?? "",
                ])
            }
        }
        let text = Output.align(cells).split(separator: "\n", omittingEmptySubsequences: false).dropLast().map {
            String($0.reversed().drop { $0 == " " }.reversed())
        }
        var lines = text.map { MonitLine(text: $0) }
        lines[0].style = .bold
        for (name, i) in appLine { lines[i].style = name == selected ? .selected : .bold }
        return (lines, appLine)
    }

    static func workerDetails(_ w: WorkerDescription) -> String {
        var parts: [String] = []
        if let s = w.statusText { parts.append(s) }
        if !w.metrics.isEmpty { parts.append(w.metrics.keys.sorted().map { "\($0)=\(PrometheusText.number(w.metrics[$0]!))" }.joined(separator: " ")) }
        if let d = w.restartDelayMs, w.row.status == .waiting { parts.append("restart in \(Output.duration(d))") }
        if let r = w.reason, w.row.status != .online { parts.append(r) }
        else if let e = w.lastExit, w.row.status != .online { parts.append("last exit: " + e.summary) }
        return parts.joined(separator: "; ")
    }

    static func percent(_ v: Double) -> String { "\((v * 10).rounded() / 10)%" }

    /// The last `count` lines of a log file (reading at most its last 256 KiB), made safe to print.
    static func tail(_ path: String, _ count: Int) -> [String] {
        guard count > 0 else { return [] }
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return [] }
        defer { closeFD(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_size > 0 else { return [] }
        let size = Int(st.st_size)
        let want = min(size, 256 << 10)
        var buf = [UInt8](repeating: 0, count: want)
        let n = buf.withUnsafeMutableBytes { pread(fd, $0.baseAddress, want, off_t(size - want)) }
        guard n > 0 else { return [] }
        var lines = buf[0..<n].split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
        if lines.last?.isEmpty == true { lines.removeLast() }
        // A read that starts mid-file starts mid-line: drop that partial first line.
        if want < size, lines.count > 1 { lines.removeFirst() }
        return lines.suffix(count).map { printable(String(decoding: $0, as: UTF8.self)) }
    }

    /// Log text without the escape sequences and control characters that would break the screen.
    static func printable(_ s: String) -> String {
        var out = String.UnicodeScalarView()
        var inEscape = false
        var inCSI = false
        for u in s.unicodeScalars {
            if inCSI {
                if (0x40...0x7e).contains(u.value) { inCSI = false }
                continue
            }
            if inEscape {
                inEscape = false
                if u == "[" { inCSI = true }
                continue
            }
            switch u.value {
            case 0x1b: inEscape = true
            case 0x09: out.append(contentsOf: "    ".unicodeScalars)
            case 0x0d: continue
            case 0..<0x20, 0x7f, 0x80..<0xa0: out.append("?")
            default: out.append(u)
            }
        }
        return String(out)
    }

    /// An app's out and err files: where the daemon says (out_file, error_file), else the default ones.
    static func logFiles(_ app: String, _ snapshot: MonitSnapshot, paths: PMLPaths) -> (out: String, err: String) {
        let d = snapshot.apps.first { $0.name == app }?.description
        return (d?.outLog ?? paths.outLog(app), d?.errLog ?? paths.errLog(app))
    }

    /// The log section for one app: `rows` lines, err lines after out lines when both have some.
    static func logs(app: String, _ snapshot: MonitSnapshot, paths: PMLPaths, rows: Int) -> [MonitLine] {
        guard rows > 0 else { return [] }
        let files = logFiles(app, snapshot, paths: paths)
        let err = tail(files.err, rows)
        let out = tail(files.out, rows)
        let errShown = out.isEmpty ? err.count : min(err.count, max(rows / 3, 1))
        let outShown = min(out.count, rows - errShown)
        var lines = out.suffix(outShown).map { MonitLine(text: "out | " + $0) }
        lines += err.suffix(errShown).map { MonitLine(text: "err | " + $0) }
        if lines.isEmpty { lines.append(MonitLine(text: "(no log lines yet)")) }
        return lines
    }

    static func clock() -> String {
        var t = time(nil)
        var parts = tm()
        localtime_r(&t, &parts)
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        return "\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec))"
    }

    /// One full screen of `height` lines.
    static func screen(_ snapshot: MonitSnapshot, selected: String?, paths: PMLPaths, height: Int) -> [MonitLine] {
        let workers = snapshot.apps.reduce(0) { $0 + $1.rows.count }
        var top = [MonitLine(text: "pml monit  \(clock())  \(snapshot.apps.count) app(s), \(workers) worker(s)  [\(helpKeys)]", style: .bold)]
        if let e = snapshot.error { top.append(MonitLine(text: "! " + e, style: .bold)) }
        if snapshot.apps.isEmpty {
            top.append(MonitLine(text: ""))
            top.append(MonitLine(text: "no apps (start one with: pml start app.lua)"))
            return Array(top.prefix(height))
        }
        let (table, appLine) = table(snapshot, selected: selected)
        // The table gets what is left once the title, a gap, the log title and a few log lines are in.
        let logReserve = selected == nil ? 0 : 2 + min(6, max(3, height / 3))
        let tableRoom = max(2, height - top.count - logReserve)
        var shownTable = table
        if table.count > tableRoom {
            // Keep the header, and scroll the rows so the selected app's line is in view.
            let body = Array(table.dropFirst())
            let room = tableRoom - 1
            let want = (selected.flatMap { appLine[$0] } ?? 1) - 1
            let start = max(0, min(want - room / 3, body.count - room))
            shownTable = [table[0]] + body[start..<(start + room)]
        }
        var lines = top + shownTable
        if let app = selected {
            let logRows = height - lines.count - 2
            if logRows > 0 {
                lines.append(MonitLine(text: ""))
                let files = logFiles(app, snapshot, paths: paths)
                lines.append(MonitLine(text: "logs of \(app)  (\(files.out), \(files.err))", style: .bold))
                lines += logs(app: app, snapshot, paths: paths, rows: logRows)
            }
        }
        return Array(lines.prefix(height))
    }

    /// `pml monit` when stdout is not a terminal: the table and a short log tail of every app.
    static func snapshot(_ snapshot: MonitSnapshot, paths: PMLPaths) -> String {
        var lines = screen(snapshot, selected: nil, paths: paths, height: Int.max).map(\.text)
        lines[0] = "pml monit  \(clock())  \(snapshot.apps.count) app(s), \(snapshot.apps.reduce(0) { $0 + $1.rows.count }) worker(s)"
        for app in snapshot.apps {
            lines.append("")
            lines.append("logs of \(app.name):")
            lines += logs(app: app.name, snapshot, paths: paths, rows: 5).map(\.text)
        }
        return lines.joined(separator: "\n") + "\n"
    }
}

// MARK: - The terminal

/// Set by the signal handlers; read by the loop. Plain memory behind `let` pointers: no lazy
/// initialisation or exclusivity bookkeeping happens inside a handler.
nonisolated(unsafe) private let monitSignal: UnsafeMutablePointer<sig_atomic_t> = {
    let p = UnsafeMutablePointer<sig_atomic_t>.allocate(capacity: 1)
    p.initialize(to: 0)
    return p
}()

nonisolated(unsafe) private let monitResized: UnsafeMutablePointer<sig_atomic_t> = {
    let p = UnsafeMutablePointer<sig_atomic_t>.allocate(capacity: 1)
    p.initialize(to: 0)
    return p
}()

/// Raw keyboard input and the alternate screen, always given back.
final class MonitTerminal {
    /// Where keys come from: stdin if it is a terminal, else the controlling terminal, else none (-1).
    let input: Int32
    private var saved: termios?
    private var ownsInput = false
    private var active = false

    init() {
        if isatty(0) == 1 {
            input = 0
        } else {
            let fd = open("/dev/tty", O_RDONLY | O_CLOEXEC | O_NOCTTY)
            input = fd
            ownsInput = fd >= 0
        }
    }

    deinit {
        leave()
        if ownsInput { closeFD(input) }
    }

    func enter() throws(CLIError) {
        if input >= 0 {
            var t = termios()
            if tcgetattr(input, &t) == 0 {
                saved = t
                // No line editing, no echo, no signals from keys (Ctrl-C arrives as a byte), no flow control.
                t.c_lflag &= ~tcflag_t(ICANON | ECHO | ISIG | IEXTEN)
                t.c_iflag &= ~tcflag_t(IXON | ICRNL | INLCR)
                withUnsafeMutableBytes(of: &t.c_cc) { cc in
                    cc[Int(VMIN)] = 1
                    cc[Int(VTIME)] = 0
                }
                if tcsetattr(input, TCSANOW, &t) != 0 { saved = nil }
            }
        }
        active = true
        // Alternate screen, cursor hidden, screen cleared.
        try write("\u{1b}[?1049h\u{1b}[?25l\u{1b}[H\u{1b}[2J")
    }

    /// Puts the terminal back as it was: main screen, cursor shown, the saved modes.
    func leave() {
        guard active else { return }
        active = false
        try? writeAll(1, "\u{1b}[0m\u{1b}[?25h\u{1b}[?1049l")
        if var t = saved { tcsetattr(input, TCSANOW, &t) }
        saved = nil
    }

    /// Rows and columns (24×80 when the terminal does not say).
    func size() -> (rows: Int, cols: Int) {
        var ws = winsize()
        if ioctl(1, UInt(TIOCGWINSZ), &ws) == 0, ws.ws_row > 0, ws.ws_col > 0 { return (Int(ws.ws_row), Int(ws.ws_col)) }
        return (24, 80)
    }

    func write(_ text: String) throws(CLIError) {
        do { try writeAll(1, text) } catch { throw CLIError("cannot write to the terminal: \(error)") }
    }

    /// Draws a frame in place: home, each line then erase-to-end-of-line, then erase below.
    func draw(_ lines: [MonitLine], cols: Int) throws(CLIError) {
        var out = "\u{1b}[H"
        // One column spare: writing the last column leaves some terminals about to wrap.
        let width = max(1, cols - 1)
        for (i, line) in lines.enumerated() {
            if i > 0 { out += "\r\n" }
            let text = line.text.count > width ? String(line.text.prefix(width)) : line.text
            switch line.style {
            case .plain: out += text
            case .bold: out += "\u{1b}[1m" + text + "\u{1b}[0m"
            case .selected: out += "\u{1b}[7m" + text + String(repeating: " ", count: width - text.count) + "\u{1b}[0m"
            }
            out += "\u{1b}[K"
        }
        out += "\u{1b}[J"
        try write(out)
    }
}

/// The refresh loop.
struct MonitDashboard {
    let source: MonitSource
    let paths: PMLPaths
    let intervalMs: Int
    var snapshot: MonitSnapshot
    var selected: String?

    init(source: MonitSource, paths: PMLPaths, intervalMs: Int, first: MonitSnapshot) {
        self.source = source
        self.paths = paths
        self.intervalMs = intervalMs
        self.snapshot = first
        self.selected = first.apps.first?.name
    }

    enum Key { case quit, up, down }

    static func keys(_ bytes: ArraySlice<UInt8>) -> [Key] {
        var keys: [Key] = []
        var i = bytes.startIndex
        while i < bytes.endIndex {
            let b = bytes[i]
            switch b {
            case UInt8(ascii: "q"), UInt8(ascii: "Q"), 3, 4: keys.append(.quit)
            case UInt8(ascii: "k"), 16: keys.append(.up)
            case UInt8(ascii: "j"), 14: keys.append(.down)
            case 0x1b:
                // ESC [ A / ESC O A (application cursor mode): up; B: down.
                if i + 2 < bytes.endIndex, bytes[i + 1] == UInt8(ascii: "[") || bytes[i + 1] == UInt8(ascii: "O") {
                    if bytes[i + 2] == UInt8(ascii: "A") { keys.append(.up) }
                    if bytes[i + 2] == UInt8(ascii: "B") { keys.append(.down) }
                    i += 2
                }
            default: break
            }
            i += 1
        }
        return keys
    }

    mutating func move(_ by: Int) {
        let names = snapshot.apps.map(\.name)
        guard !names.isEmpty else { return }
        let current = selected.flatMap { names.firstIndex(of: $0) } ?? 0
        selected = names[max(0, min(names.count - 1, current + by))]
    }

    mutating func refresh() {
        do {
            let fresh = try source.fetch(autostart: false)
            snapshot = fresh
        } catch {
            snapshot.error = "\(error.description) (showing the last answer)"
        }
        if let s = selected, snapshot.apps.contains(where: { $0.name == s }) { return }
        selected = snapshot.apps.first?.name
    }

    mutating func run() throws(CLIError) {
        let terminal = MonitTerminal()
        monitSignal.pointee = 0
        monitResized.pointee = 0
        // A daemon that goes away mid-request must not kill us with the screen still raw.
        ignoreSIGPIPE()
        let handler: @convention(c) (Int32) -> Void = { sig in
            if sig == SIGWINCH { monitResized.pointee = 1 } else { monitSignal.pointee = sig }
        }
        var action = sigaction()
        action.__sigaction_handler.sa_handler = handler
        sigemptyset(&action.sa_mask)
        action.sa_flags = 0  // no SA_RESTART: poll returns EINTR at once.
        // Whoever started us may have blocked them (a test runner, a supervisor): they must arrive.
        var handled = sigset_t()
        sigemptyset(&handled)
        for sig in [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGWINCH] {
            sigaction(sig, &action, nil)
            sigaddset(&handled, sig)
        }
        sigprocmask(SIG_UNBLOCK, &handled, nil)

        try terminal.enter()
        var caught: Int32 = 0
        do {
            try loop(terminal, caught: &caught)
        } catch {
            terminal.leave()
            throw error
        }
        terminal.leave()
        if caught != 0 {
            // Die of the signal, as without the handler, now that the terminal is restored.
            signal(caught, SIG_DFL)
            raise(caught)
            Glibc.exit(128 + caught)
        }
    }

    private mutating func loop(_ terminal: MonitTerminal, caught: inout Int32) throws(CLIError) {
        var next = monotonicMs() + intervalMs
        var inputOpen = terminal.input >= 0
        var frame = terminal.size()
        try terminal.draw(MonitView.screen(snapshot, selected: selected, paths: paths, height: frame.rows), cols: frame.cols)
        while true {
            if monitSignal.pointee != 0 {
                caught = monitSignal.pointee
                return
            }
            var redraw = false
            if monitResized.pointee != 0 {
                monitResized.pointee = 0
                redraw = true
            }
            var fds = [pollfd(fd: inputOpen ? terminal.input : -1, events: Int16(POLLIN), revents: 0)]
            let wait = redraw ? 0 : max(0, next - monotonicMs())
            let ready = poll(&fds, 1, Int32(min(wait, 60_000)))
            if ready > 0, fds[0].revents != 0 {
                var buf = [UInt8](repeating: 0, count: 256)
                let n = buf.withUnsafeMutableBytes { Glibc.read(terminal.input, $0.baseAddress, $0.count) }
                if n > 0 {
                    for key in Self.keys(buf[0..<n]) {
                        switch key {
                        case .quit: return
                        case .up: move(-1)
                        case .down: move(1)
                        }
                    }
                    redraw = true
                } else if n == 0 || (errno != EINTR && errno != EAGAIN) {
                    // The terminal went away (hangup): nothing can be shown or typed any more.
                    if fds[0].revents & Int16(POLLHUP) != 0 || n == 0 { return }
                    inputOpen = false
                }
            }
            if monotonicMs() >= next {
                refresh()
                next = monotonicMs() + intervalMs
                redraw = true
            }
            if redraw {
                frame = terminal.size()
                try terminal.draw(MonitView.screen(snapshot, selected: selected, paths: paths, height: frame.rows), cols: frame.cols)
            }
        }
    }
}
