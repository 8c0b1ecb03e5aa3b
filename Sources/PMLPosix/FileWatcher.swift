import CSystemShim
import Glibc

/// A path watch mode cannot watch, said in one line.
public struct WatchError: Error, Sendable, Equatable, CustomStringConvertible {
    public var description: String
    /// A limit was reached (pml's cap on folders, or the system's watches): watching more is futile.
    public var isLimit: Bool
    public init(_ description: String, isLimit: Bool = false) {
        self.description = description
        self.isLimit = isLimit
    }
}

/// inotify watches over folder trees (recursively, new folders included) and single files,
/// bounded in the number of folders, so a huge tree fails at once instead of eating the
/// system's watches. Non-blocking: call `readChanges()` when `fd` is readable.
public final class FileWatcher {
    public let fd: Int32
    /// Folders watched at most; more is an error (the daemon says which path and why).
    public let maxDirectories: Int
    private let isIgnored: (String) -> Bool
    private var roots: [String] = []
    /// Watch descriptor → the folder it watches.
    private var folders: [Int32: String] = [:]
    /// Folders watched as (part of) a tree: every change inside counts.
    private var trees: Set<Int32> = []
    /// Folders watched for single files: only changes to these names count.
    private var files: [Int32: Set<String>] = [:]
    /// Why a folder created after the start could not be watched, until `takeProblem()`.
    private var problem: String?

    /// The last problem since the previous call, for the daemon's log (said once).
    public func takeProblem() -> String? {
        defer { problem = nil }
        return problem
    }

    public init(paths: [String], maxDirectories: Int, isIgnored: @escaping (String) -> Bool) throws(WatchError) {
        self.maxDirectories = maxDirectories
        self.isIgnored = isIgnored
        fd = pml_inotify_init()
        guard fd >= 0 else { throw WatchError("cannot start inotify: \(String(cString: strerror(errno)))") }
        // A throw from here on runs deinit, which closes fd: every stored property has its value
        // (closing it here too closed whatever another thread had opened under the number meanwhile).
        for path in paths { try watch(path) }
        roots = paths
    }

    deinit { closeFD(fd) }

    /// How many folders are watched now.
    public var watchedFolders: Int { folders.count }

    private func watch(_ path: String) throws(WatchError) {
        var st = stat()
        guard stat(path, &st) == 0 else { throw WatchError("cannot watch \(path): \(String(cString: strerror(errno)))") }
        if (st.st_mode & S_IFMT) == S_IFDIR { return try addTree(path) }
        // A file is watched through its folder: editors replace files by renaming over them.
        let slash = path.lastIndex(of: "/")!
        let folder = slash == path.startIndex ? "/" : String(path[..<slash])
        let wd = try add(folder, root: path)
        files[wd, default: []].insert(String(path[path.index(after: slash)...]))
    }

    private func add(_ folder: String, root: String) throws(WatchError) -> Int32 {
        let wd = pml_inotify_add_dir(fd, folder)
        guard wd >= 0 else {
            if errno == ENOSPC {
                throw WatchError("cannot watch \(root): the system's inotify watches are used up (sysctl fs.inotify.max_user_watches)", isLimit: true)
            }
            throw WatchError("cannot watch \(folder): \(String(cString: strerror(errno)))")
        }
        if folders[wd] == nil, folders.count >= maxDirectories {
            _ = inotify_rm_watch(fd, wd)
            throw WatchError("cannot watch \(root): more than \(maxDirectories) folders (leave some out with ignore_watch, or watch fewer paths)", isLimit: true)
        }
        folders[wd] = folder
        return wd
    }

    /// Entries read while walking one tree at most: a folder of millions of files must not hold the loop.
    public static let maxEntries = 1_000_000

    /// Watches `root` and every folder under it that is not ignored; symlinks are not followed.
    private func addTree(_ root: String) throws(WatchError) {
        var pending = [root]
        var entries = 0
        while let folder = pending.popLast() {
            let wd: Int32
            do {
                wd = try add(folder, root: root)
            } catch {
                // A subfolder that vanished or cannot be read is not an error; limits are.
                if folder == root || error.isLimit { throw error }
                continue
            }
            trees.insert(wd)
            guard let dir = opendir(folder) else { continue }
            defer { closedir(dir) }
            while let entry = readdir(dir) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                if name == "." || name == ".." { continue }
                entries += 1
                if entries > Self.maxEntries {
                    throw WatchError("cannot watch \(root): more than \(Self.maxEntries) files (leave some out with ignore_watch)", isLimit: true)
                }
                let path = folder == "/" ? "/" + name : folder + "/" + name
                var isDir = entry.pointee.d_type == UInt8(DT_DIR)
                if entry.pointee.d_type == UInt8(DT_UNKNOWN) {
                    var st = stat()
                    isDir = lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
                }
                if isDir && !isIgnored(path) { pending.append(path) }
            }
        }
    }

    /// The paths that changed since the last call (not ignored ones), at most a few reads' worth
    /// per call so a flood of events cannot hold the loop. Folders created inside a watched tree
    /// are watched from now on. When the kernel's queue overflowed (events were lost), the trees
    /// are walked again and the answer says so.
    public func readChanges() -> [String] {
        var changed: [String] = []
        var overflowed = false
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        for _ in 0..<16 {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            var offset = 0
            while offset + 16 <= n {
                let (wd, mask, length) = buffer.withUnsafeBytes { raw in
                    (raw.loadUnaligned(fromByteOffset: offset, as: Int32.self),
                     raw.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self),
                     Int(raw.loadUnaligned(fromByteOffset: offset + 12, as: UInt32.self)))
                }
                let name = String(decoding: buffer[(offset + 16)..<min(n, offset + 16 + length)].prefix { $0 != 0 }, as: UTF8.self)
                offset += 16 + length
                if mask & UInt32(PML_IN_Q_OVERFLOW) != 0 { overflowed = true; continue }
                if mask & UInt32(PML_IN_IGNORED) != 0 {
                    folders[wd] = nil
                    trees.remove(wd)
                    files[wd] = nil
                    continue
                }
                guard let folder = folders[wd] else { continue }
                let inTree = trees.contains(wd)
                if !inTree, let names = files[wd], !names.contains(name) { continue }
                let path = name.isEmpty ? folder : (folder == "/" ? "/" : folder + "/") + name
                if isIgnored(path) { continue }
                let created = mask & UInt32(PML_IN_CREATE | PML_IN_MOVED_TO) != 0
                if inTree, created, mask & UInt32(PML_IN_ISDIR) != 0 {
                    do { try addTree(path) } catch { problem = error.description }
                }
                changed.append(path)
            }
        }
        if overflowed {
            for root in roots {
                do { try watch(root) } catch { problem = error.description }
            }
            changed.append("(inotify queue overflowed: some changes were not seen one by one)")
        }
        return changed
    }
}
