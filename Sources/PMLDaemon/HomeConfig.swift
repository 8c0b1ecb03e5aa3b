import FoundationEssentials
import Glibc
import PMLCore
import PMLPosix

/// `$PML_HOME/config.json` (`metrics_listen`, `dashboard_listen`) and the dashboard's token file.
enum HomeConfig {
    static func path(_ paths: PMLPaths) -> String { paths.home + "/config.json" }
    static func tokenPath(_ paths: PMLPaths) -> String { paths.home + "/dashboard.token" }

    /// The loopback address named by `environmentName` or by `key` in config.json (a number is a
    /// port on 127.0.0.1), or nil when neither names one. Throws for anything but a loopback address.
    static func loopbackAddress(_ key: String, environmentName: String?, paths: PMLPaths,
                                environment: [String: String]) throws(SystemError) -> ListenAddress? {
        var text = environmentName.flatMap { environment[$0] }
        if text == nil, let config = read(paths) {
            text = config[key]?.stringValue ?? config[key]?.intValue.map { "127.0.0.1:\($0)" }
        }
        guard let text, !text.isEmpty else { return nil }
        guard let address = ListenAddress.parse(.string(text), baseDirectory: paths.home),
              case .tcp(let host?, _) = address, ["127.0.0.1", "::1", "localhost"].contains(host) || host.hasPrefix("127.") else {
            throw SystemError("\(key) \"\(text)\" must be a loopback address such as 127.0.0.1:9615", errno: EINVAL)
        }
        return address
    }

    /// A whole number `range` holds from the variable `name` of the daemon's environment (limits
    /// tests and unusual setups tune: `PML_WATCH_MAX_FOLDERS`, `PML_CONTROL_IDLE_MS`), else `fallback`.
    static func environmentInteger(_ name: String, in range: ClosedRange<Int>, default fallback: Int) -> Int {
        processEnvironment()[name].flatMap { CheckedNumber.integer(Substring($0), in: range) } ?? fallback
    }

    /// config.json's keys, or nil when it is missing or not a JSON object.
    static func read(_ paths: PMLPaths) -> [String: ScriptValue]? {
        guard let bytes = readFile(path(paths), limit: 1 << 20) else { return nil }
        return try? JSONDecoder().decode([String: ScriptValue].self, from: Data(bytes))
    }

    /// Sets one key in config.json, keeping the others (atomically: temp file, rename). A file that
    /// exists but is not a JSON object is left alone, and that is an error.
    static func set(_ key: String, to value: ScriptValue, paths: PMLPaths) throws(SystemError) {
        var config: [String: ScriptValue] = [:]
        if pathExists(path(paths)) {
            guard let existing = read(paths) else {
                throw SystemError("\(path(paths)) is not a JSON object; not changing it", errno: EINVAL)
            }
            config = existing
        }
        config[key] = value
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        guard let data = try? encoder.encode(config) else { throw SystemError("encode config.json", errno: EINVAL) }
        try writePrivately(String(decoding: data, as: UTF8.self) + "\n", to: path(paths))
    }

    /// The home's dashboard token (64 hex digits, from the kernel's random source), created 0600 on first use.
    static func token(_ paths: PMLPaths) throws(SystemError) -> String {
        let file = tokenPath(paths)
        if let bytes = readFile(file, limit: 4096) {
            let text = String(decoding: bytes, as: UTF8.self).filter { !$0.isWhitespace }
            if text.count == 64, text.allSatisfy(\.isHexDigit) {
                chmod(file, 0o600)
                return text
            }
        }
        let token = try randomHex(32)
        try writePrivately(token + "\n", to: file)
        return token
    }

    /// `count` bytes from the kernel's random source, as hex.
    static func randomHex(_ count: Int) throws(SystemError) -> String {
        let fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SystemError("open /dev/urandom", errno: errno) }
        defer { closeFD(fd) }
        var raw = [UInt8](repeating: 0, count: count)
        let n = raw.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        guard n == count else { throw SystemError("read /dev/urandom", errno: errno) }
        return raw.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }

    /// Writes a 0600 file atomically.
    private static func writePrivately(_ text: String, to file: String) throws(SystemError) {
        let tmp = "\(file).tmp.\(getpid())"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SystemError("open \(tmp)", errno: errno) }
        defer { closeFD(fd) }
        fchmod(fd, 0o600)
        do {
            try writeAll(fd, text)
        } catch {
            unlink(tmp)
            throw error
        }
        guard rename(tmp, file) == 0 else {
            let e = errno
            unlink(tmp)
            throw SystemError("rename \(file)", errno: e)
        }
    }
}
