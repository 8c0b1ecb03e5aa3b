import FoundationEssentials
import Glibc
import PMLCore
import PMLPosix

/// Which of a worker's output streams.
enum OutputStream {
    case out, err
}

/// One app's log files (or one instance's, when its app does not merge logs): out, err and the
/// optional combined file, appended to by all of its workers.
final class AppLogFiles {
    private(set) var outPath: String
    private(set) var errPath: String
    /// Both streams also go here (`log_file`).
    private(set) var combinedPath: String?
    private var outFD: Int32 = -1
    private var errFD: Int32 = -1
    private var combinedFD: Int32 = -1
    var timestamps: Bool
    var dateFormat: String?
    /// Each line becomes a JSON object (log_format = "json").
    var jsonLines: Bool
    let app: String
    /// `pml run`: lines go to pml's own stdout/stderr, each prefixed with this ("web | ").
    let consolePrefix: String?

    init(app: String, outPath: String, errPath: String, timestamps: Bool, dateFormat: String? = nil, jsonLines: Bool = false,
         consolePrefix: String? = nil) {
        self.app = app
        self.outPath = outPath
        self.errPath = errPath
        self.timestamps = timestamps
        self.dateFormat = dateFormat
        self.jsonLines = jsonLines
        self.consolePrefix = consolePrefix
        if consolePrefix != nil {
            outFD = 1
            errFD = 2
        }
    }

    /// Takes up an app's log settings (start, reload): its line format, and its files — those of
    /// `instance` when the app does not merge logs. Files that moved are opened anew.
    func configure(for spec: AppSpec, paths: PMLPaths, instance: Int? = nil) {
        timestamps = spec.timestamps
        dateFormat = spec.logDateFormat
        jsonLines = spec.logFormat == "json"
        guard consolePrefix == nil else { return }
        let place = { (path: String) in instance.map { spec.perInstance(path, instance: $0) } ?? path }
        let out = place(spec.outFile ?? paths.outLog(spec.name))
        let err = place(spec.errorFile ?? paths.errLog(spec.name))
        let combined = spec.logFile.map(place)
        if (out, err, combined) != (outPath, errPath, combinedPath) {
            reopen()
            (outPath, errPath, combinedPath) = (out, err, combined)
        }
    }

    /// Opens every file now, so a log path that cannot be written is reported when the app starts.
    func open() throws(SystemError) {
        guard consolePrefix == nil else { return }
        if outFD < 0 { outFD = try openAppend(outPath) }
        if errFD < 0 { errFD = try openAppend(errPath) }
        if combinedFD < 0, let combinedPath { combinedFD = try openAppend(combinedPath) }
    }

    /// Closes the files; the next line opens them again by path (`pml reloadLogs`: after logrotate
    /// has renamed them, new files are created and nothing written before is lost).
    func reopen() {
        guard consolePrefix == nil else { return }
        for fd in [outFD, errFD, combinedFD] { closeFD(fd) }
        (outFD, errFD, combinedFD) = (-1, -1, -1)
    }

    /// Every file written, for `pml logs` and for watch mode to ignore.
    var files: [String] { [outPath, errPath] + (combinedPath.map { [$0] } ?? []) }

    /// Whether output is cut into lines, each dressed (a time, an app name, JSON).
    var prefixesLines: Bool { timestamps || jsonLines || consolePrefix != nil }

    /// What starts each plain line: the time and/or the app's name.
    func linePrefix() -> String {
        (timestamps ? time() + " " : "") + (consolePrefix ?? "")
    }

    private func time() -> String {
        dateFormat.map { Self.formatLocalTime($0) } ?? Self.timestamp()
    }

    /// One line of a worker's output, as it goes into the log.
    func dress(_ line: ArraySlice<UInt8>, stream: OutputStream, worker: Int) -> [UInt8] {
        guard jsonLines else { return Array(linePrefix().utf8) + line + [UInt8(ascii: "\n")] }
        let entry: ScriptValue = .object([
            "time": .string(time()), "app": .string(app), "worker": .int(Int64(worker)),
            "stream": .string(stream == .out ? "out" : "err"), "message": .string(String(decoding: line, as: UTF8.self)),
        ])
        let json = (try? Self.jsonEncoder.encode(entry)).map { Array($0) } ?? []
        return Array((consolePrefix ?? "").utf8) + json + [UInt8(ascii: "\n")]
    }

    /// Stable key order, so JSON log lines are easy to read and to diff.
    private static let jsonEncoder: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        return e
    }()

    /// PM2's log_date_format: YYYY MM DD HH mm ss SSS Z, in local time; other text stays.
    static func formatLocalTime(_ format: String, atMs ms: Int = wallClockMs()) -> String {
        var t = time_t(ms / 1000)
        var parts = tm()
        localtime_r(&t, &parts)
        func pad(_ v: Int, _ width: Int) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, width - s.count)) + s
        }
        let offset = parts.tm_gmtoff / 60
        let tokens: [(String, String)] = [
            ("YYYY", pad(Int(parts.tm_year) + 1900, 4)), ("SSS", pad(ms % 1000, 3)), ("MM", pad(Int(parts.tm_mon) + 1, 2)),
            ("DD", pad(Int(parts.tm_mday), 2)), ("HH", pad(Int(parts.tm_hour), 2)), ("mm", pad(Int(parts.tm_min), 2)),
            ("ss", pad(Int(parts.tm_sec), 2)), ("Z", (offset < 0 ? "-" : "+") + pad(abs(offset) / 60, 2) + ":" + pad(abs(offset) % 60, 2)),
        ]
        var out = ""
        var rest = Substring(format)
        scan: while !rest.isEmpty {
            for (token, value) in tokens where rest.hasPrefix(token) {
                out += value
                rest = rest.dropFirst(token.count)
                continue scan
            }
            out.append(rest.removeFirst())
        }
        return out
    }

    deinit {
        // pml's own stdout and stderr stay open.
        reopen()
    }

    private func fd(_ stream: OutputStream) -> Int32 {
        switch stream {
        case .out:
            if outFD < 0 { outFD = (try? openAppend(outPath)) ?? -1 }
            return outFD
        case .err:
            if errFD < 0 { errFD = (try? openAppend(errPath)) ?? -1 }
            return errFD
        }
    }

    private var combined: Int32 {
        if combinedFD < 0, let combinedPath { combinedFD = (try? openAppend(combinedPath)) ?? -1 }
        return combinedFD
    }

    /// Appends raw bytes. A failing log write is dropped: the worker must never wait on it.
    func append(_ stream: OutputStream, _ bytes: UnsafeRawBufferPointer) {
        for f in [fd(stream), combined] where f >= 0 { try? writeAll(f, bytes) }
    }

    /// Appends one line from pml itself (hook errors, restarts) to the err log.
    func note(_ text: String) {
        dress(Array("[pml] \(text)".utf8)[...], stream: .err, worker: -1).withUnsafeBytes { append(.err, $0) }
    }

    /// Empties the files (`pml flush`); O_APPEND writers continue at the new end.
    func flush() {
        guard consolePrefix == nil else { return }
        for f in [fd(.out), fd(.err), combined] where f >= 0 { _ = ftruncate(f, 0) }
    }

    /// "2026-11-25T14:40:06.123Z", UTC, as log prefixes.
    static func timestamp() -> String {
        let ms = wallClockMs()
        var t = time_t(ms / 1000)
        var parts = tm()
        gmtime_r(&t, &parts)
        func pad(_ v: Int32, _ width: Int) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, width - s.count)) + s
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(Int32(ms % 1000), 3))Z"
    }
}

/// Reads one worker's stdout or stderr pipe into its app's log file. Reads at most one chunk
/// per wake-up, so a worker that writes without pause cannot starve the loop. The loop's
/// registration keeps it alive until EOF, so output written just before a crash is not lost
/// when the worker is respawned at once.
final class OutputPipe {
    private let fd: Int32
    private let stream: OutputStream
    private let files: AppLogFiles
    private let worker: Int
    private let scratch: ReadBuffer
    private weak var loop: EventLoop?
    private var handle: IOHandle?
    private var partial: [UInt8] = []

    init(fd: Int32, stream: OutputStream, files: AppLogFiles, worker: Int, loop: EventLoop, scratch: ReadBuffer) throws(SystemError) {
        self.fd = fd
        self.worker = worker
        self.scratch = scratch
        self.stream = stream
        self.files = files
        self.loop = loop
        handle = try loop.register(fd: fd, events: [.readable]) { _ in self.readable() }
    }

    private func readable() {
        switch scratch.read(fd) {
        case .data(let n):
            if files.prefixesLines {
                stamp(scratch.bytes[0..<n])
            } else {
                scratch.bytes.withUnsafeBytes { files.append(stream, UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            }
        case .wouldBlock:
            break
        case .eof:
            if !partial.isEmpty { stamp([UInt8(ascii: "\n")][...]) } // the unfinished last line
            close()
        }
    }

    /// Prefixes each complete line (time, app name); keeps an unfinished line for the next read.
    private func stamp(_ bytes: ArraySlice<UInt8>) {
        partial.append(contentsOf: bytes)
        var out: [UInt8] = []
        while let nl = partial.firstIndex(of: UInt8(ascii: "\n")) {
            out.append(contentsOf: files.dress(partial[..<nl], stream: stream, worker: worker))
            partial.removeSubrange(...nl)
        }
        // A line longer than a chunk is written in pieces rather than held without bound.
        if partial.count > ReadBuffer.size {
            out.append(contentsOf: files.dress(partial[...], stream: stream, worker: worker))
            partial.removeAll()
        }
        if !out.isEmpty { out.withUnsafeBytes { files.append(stream, $0) } }
    }

    private func close() {
        if let handle { loop?.unregister(handle) }
        handle = nil
        closeFD(fd)
    }
}

/// One read buffer shared by every pipe and channel the loop reads: the loop is single-threaded,
/// and a fresh 64 KiB array per read would cost more than the read itself.
final class ReadBuffer {
    static let size = 64 * 1024
    private(set) var bytes = [UInt8](repeating: 0, count: ReadBuffer.size)

    /// One non-blocking read into the buffer (errors count as EOF: the fd is done either way).
    func read(_ fd: Int32) -> ReadResult {
        bytes.withUnsafeMutableBytes { (try? readSome(fd, into: $0)) ?? .eof }
    }

    /// One non-blocking read of at most `max` bytes into the buffer.
    func read(_ fd: Int32, max: Int) -> ReadResult {
        bytes.withUnsafeMutableBytes { b in
            (try? readSome(fd, into: UnsafeMutableRawBufferPointer(rebasing: b[0..<Swift.min(max, b.count)]))) ?? .eof
        }
    }
}
