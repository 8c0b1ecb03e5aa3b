/// Where a process sits in the cgroup v1 `cpu` hierarchy, found from the texts of
/// `/proc/self/cgroup` and `/proc/self/mountinfo` (pure: the caller reads them). Script threads go
/// into a child of that folder (docs/ARCHITECTURE.md, threads).
public enum CPUCgroup {
    /// The folder of the process's v1 `cpu` cgroup, or nil when no v1 hierarchy has the `cpu`
    /// controller or its mount does not show the process's cgroup.
    /// Paths with a `.` or `..` component are refused wherever they come from: in a cgroup namespace
    /// `/proc/self/cgroup` shows a cgroup outside it as `/../x`, which joined to the mount point
    /// names a folder outside the cgroup tree.
    public static func v1Directory(procCgroup: String, mountinfo: String) -> String? {
        guard let path = v1CPUPath(procCgroup) else { return nil }
        for line in mountinfo.split(separator: "\n") {
            guard let mount = cpuMount(line), isPlainAbsolute(mount.root), isPlainAbsolute(mount.point) else { continue }
            if mount.root == "/" { return join(mount.point, path) }
            if path == mount.root { return mount.point }
            if path.hasPrefix(mount.root + "/") { return join(mount.point, String(path.dropFirst(mount.root.count))) }
        }
        return nil
    }

    /// Whether `path` is absolute and names its folders plainly: no `.`, `..` or empty component
    /// ("/" itself is plain).
    public static func isPlainAbsolute(_ path: String) -> Bool {
        guard path.hasPrefix("/") else { return false }
        return path == "/" || path.split(separator: "/", omittingEmptySubsequences: false).dropFirst()
            .allSatisfy { !$0.isEmpty && $0 != "." && $0 != ".." }
    }

    /// The cgroup path of the hierarchy whose controller list names `cpu` ("1:cpu,cpuacct:/a/b"), if plain.
    static func v1CPUPath(_ procCgroup: String) -> String? {
        for line in procCgroup.split(separator: "\n") {
            let fields = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard fields.count == 3, fields[1].split(separator: ",").contains("cpu") else { continue }
            let path = String(fields[2])
            return isPlainAbsolute(path) ? path : nil
        }
        return nil
    }

    /// A mountinfo line of a v1 cgroup mount with the `cpu` controller: its root and mount point.
    /// Fields: id parent dev root point options [optional...] - fstype source superoptions.
    static func cpuMount(_ line: Substring) -> (root: String, point: String)? {
        let fields = line.split(separator: " ")
        guard let dash = fields.firstIndex(of: "-"), dash >= 6, fields.count >= dash + 4,
              fields[dash + 1] == "cgroup", fields[dash + 3].split(separator: ",").contains("cpu") else { return nil }
        return (unescape(fields[3]), unescape(fields[4]))
    }

    /// mountinfo writes space, tab, newline and backslash in paths as octal escapes ("\040").
    static func unescape(_ field: Substring) -> String {
        var bytes: [UInt8] = []
        let utf8 = Array(field.utf8)
        var i = 0
        while i < utf8.count {
            if utf8[i] == UInt8(ascii: "\\"), i + 3 < utf8.count, let value = octal(utf8[(i + 1)...(i + 3)]) {
                bytes.append(value)
                i += 4
            } else {
                bytes.append(utf8[i])
                i += 1
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private static func octal(_ digits: ArraySlice<UInt8>) -> UInt8? {
        var value = 0
        for d in digits {
            guard d >= UInt8(ascii: "0"), d <= UInt8(ascii: "7") else { return nil }
            value = value * 8 + Int(d - UInt8(ascii: "0"))
        }
        return value <= 255 ? UInt8(value) : nil
    }

    private static func join(_ point: String, _ path: String) -> String {
        path == "/" ? point : point + path
    }
}
