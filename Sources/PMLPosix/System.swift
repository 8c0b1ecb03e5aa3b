import CSystemShim
import Glibc

/// A failed system call: which one, and errno.
public struct SystemError: Error, Sendable, Equatable, CustomStringConvertible {
    public var call: String
    public var errno: Int32

    public init(_ call: String, errno: Int32) {
        self.call = call
        self.errno = errno
    }

    public var description: String { "\(call): \(String(cString: strerror(errno)))" }
}

/// Every system call goes through here: EINTR is retried, failures become `SystemError`.
@discardableResult
public func sys<T: BinaryInteger>(_ name: String, _ body: () -> T) throws(SystemError) -> T {
    while true {
        let r = body()
        if r >= 0 { return r }
        let e = Glibc.errno
        if e == EINTR { continue }
        throw SystemError(name, errno: e)
    }
}

/// Milliseconds on CLOCK_MONOTONIC: for deadlines and uptimes, immune to clock changes.
public func monotonicMs() -> Int {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Int(ts.tv_sec) * 1000 + Int(ts.tv_nsec) / 1_000_000
}

/// Microseconds on CLOCK_MONOTONIC: for short intervals (arrivals of connections).
public func monotonicUs() -> Int {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Int(ts.tv_sec) * 1_000_000 + Int(ts.tv_nsec) / 1000
}

/// Milliseconds since the Unix epoch, for timestamps users read.
public func wallClockMs() -> Int {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Int(ts.tv_sec) * 1000 + Int(ts.tv_nsec) / 1_000_000
}

/// Closes an fd, ignoring errors (there is nothing useful to do on a failed close).
public func closeFD(_ fd: Int32) {
    if fd >= 0 { _ = Glibc.close(fd) }
}

/// Writes all of `bytes` to a blocking fd (files, pipes to a terminal).
public func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) throws(SystemError) {
    var offset = 0
    while offset < bytes.count {
        let n = try sys("write") { Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset) }
        offset += n
    }
}

/// Writes a string to a blocking fd.
public func writeAll(_ fd: Int32, _ text: String) throws(SystemError) {
    let bytes = Array(text.utf8)
    var offset = 0
    while offset < bytes.count {
        let n = try sys("write") { bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + offset, bytes.count - offset) } }
        offset += n
    }
}

/// Result of a non-blocking read.
public enum ReadResult: Equatable {
    case data(Int)
    case wouldBlock
    case eof
}

/// Reads into `buffer` from a non-blocking fd.
public func readSome(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) throws(SystemError) -> ReadResult {
    while true {
        let n = Glibc.read(fd, buffer.baseAddress, buffer.count)
        if n > 0 { return .data(n) }
        if n == 0 { return .eof }
        let e = Glibc.errno
        if e == EINTR { continue }
        if e == EAGAIN || e == EWOULDBLOCK { return .wouldBlock }
        throw SystemError("read", errno: e)
    }
}

/// Opens a file for appending (log files), CLOEXEC, creating it 0644 (0600 when `private`).
public func openAppend(_ path: String, privateMode: Bool = false) throws(SystemError) -> Int32 {
    try sys("open \(path)") { Glibc.open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, privateMode ? 0o600 : 0o644) }
}

/// Whether standard error is the file at `path` now (same device and inode): a keeper started by
/// the CLI logs to daemon.log, one under systemd to the journal.
public func standardErrorIs(_ path: String) -> Bool {
    var a = stat(), b = stat()
    return fstat(2, &a) == 0 && stat(path, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino
}

/// Points standard error at the file at `path` anew (appending; created 0600 if missing), for
/// after logrotate renamed the one it was.
public func reopenStandardError(_ path: String) throws(SystemError) {
    let fd = try openAppend(path, privateMode: true)
    defer { closeFD(fd) }
    _ = try sys("dup2 \(path)") { dup2(fd, 2) }
}

/// Reads a whole (small) file; nil if it cannot be read.
public func readFile(_ path: String, limit: Int = 16 << 20) -> [UInt8]? {
    let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
    if fd < 0 { return nil }
    defer { closeFD(fd) }
    var out: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while out.count < limit {
        let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        if n < 0 { if Glibc.errno == EINTR { continue }; return nil }
        if n == 0 { break }
        out.append(contentsOf: chunk[0..<n])
    }
    return out
}

/// Creates a folder (and parents) with the given mode if missing.
public func makeDirectories(_ path: String, mode: mode_t) throws(SystemError) {
    var current = ""
    for part in path.split(separator: "/") {
        current += "/" + part
        try makeDirectory(current, mode: mode)
    }
}

/// Creates one folder with the given mode if missing; its parent must exist (ENOENT otherwise:
/// in a cgroup tree every folder made is a cgroup, so callers make only the level they mean).
public func makeDirectory(_ path: String, mode: mode_t) throws(SystemError) {
    if Glibc.mkdir(path, mode) < 0 && Glibc.errno != EEXIST {
        throw SystemError("mkdir \(path)", errno: Glibc.errno)
    }
}

/// statfs `f_type` of cgroup file systems (linux/magic.h).
public enum CgroupMagic {
    /// CGROUP_SUPER_MAGIC: a cgroup v1 hierarchy.
    public static let v1 = 0x27e0eb
    /// CGROUP2_SUPER_MAGIC: the cgroup v2 hierarchy.
    public static let v2 = 0x63677270
}

/// The file system type (statfs `f_type`) of the folder at `path`; ENOTDIR when it is not a
/// folder or is a symbolic link.
public func folderFilesystemType(_ path: String) throws(SystemError) -> Int {
    var st = stat()
    try sys("lstat \(path)") { lstat(path, &st) }
    guard st.st_mode & S_IFMT == S_IFDIR else { throw SystemError("lstat \(path)", errno: ENOTDIR) }
    var type = 0
    try sys("statfs \(path)") { pml_statfs_type(path, &type) }
    return type
}

/// Writes `text` to a file that must exist, in one write (kernel control files: cgroup `tasks`,
/// `cpu.idle`, which take a value per write and say no through the write's error).
public func writeControlFile(_ path: String, _ text: String) throws(SystemError) {
    let fd = try sys("open \(path)") { Glibc.open(path, O_WRONLY | O_CLOEXEC) }
    defer { closeFD(fd) }
    try writeAll(fd, text)
}

/// Whether a path exists (any kind of file).
public func pathExists(_ path: String) -> Bool {
    access(path, F_OK) == 0
}

/// The names in a folder (without "." and ".."); empty if it cannot be read.
public func directoryEntries(_ path: String, max: Int = .max) -> [String] {
    guard let dir = opendir(path) else { return [] }
    defer { closedir(dir) }
    var names: [String] = []
    while names.count < max, let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if name != "." && name != ".." { names.append(name) }
    }
    return names
}

/// The current working directory.
public func currentDirectory() -> String {
    var buf = [CChar](repeating: 0, count: 4096)
    guard getcwd(&buf, buf.count) != nil else { return "/" }
    return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// Resolves symlinks and relative parts; nil if the path does not exist.
public func realPath(_ path: String) -> String? {
    guard let p = Glibc.realpath(path, nil) else { return nil }
    defer { free(p) }
    return String(cString: p)
}

/// The environment of this process as a dictionary.
/// The home folder of this process's user in the passwd database (for when HOME is unset).
public func accountHomeDirectory() -> String? {
    var entry = passwd()
    var result: UnsafeMutablePointer<passwd>?
    var buffer = [CChar](repeating: 0, count: 16384)
    guard getpwuid_r(geteuid(), &entry, &buffer, buffer.count, &result) == 0, result != nil, let dir = entry.pw_dir else { return nil }
    return String(cString: dir)
}

public func processEnvironment() -> [String: String] {
    var env: [String: String] = [:]
    var p = environ
    while let entry = p.pointee {
        let s = String(cString: entry)
        if let eq = s.firstIndex(of: "=") { env[String(s[..<eq])] = String(s[s.index(after: eq)...]) }
        p += 1
    }
    return env
}

/// The git commit this binary was built from ("unknown" unless the build set it; see scripts/install.sh).
public let pmlBuildCommit = String(cString: pml_build_commit())
