import Glibc
import PMLPosix
import Testing

/// makeDirectory and folderFilesystemType against the real kernel (what ScriptCPU relies on to stay
/// inside the cgroup tree).
@Suite struct FolderTests {
    let root: String

    init() {
        var template = Array("/tmp/pml-dir-XXXXXX".utf8CString)
        root = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    }

    @Test("makeDirectory makes one level: an existing folder is fine, a missing parent is ENOENT and nothing is made")
    func oneLevel() throws {
        defer { _ = system("rm -rf '\(root)'") }
        try makeDirectory(root + "/a", mode: 0o755)
        try makeDirectory(root + "/a", mode: 0o755)
        #expect(throws: SystemError("mkdir \(root)/b/c", errno: ENOENT)) { try makeDirectory(root + "/b/c", mode: 0o755) }
        #expect(access(root + "/b", F_OK) != 0, "no parent was made")
    }

    @Test("folderFilesystemType: a folder's statfs type; a file, a symbolic link or a missing path throws")
    func filesystemTypes() throws {
        defer { _ = system("rm -rf '\(root)'") }
        let tmpType = try folderFilesystemType(root)
        #expect(tmpType != CgroupMagic.v1 && tmpType != CgroupMagic.v2)
        close(open(root + "/file", O_WRONLY | O_CREAT, 0o644))
        #expect(throws: SystemError("lstat \(root)/file", errno: ENOTDIR)) { try folderFilesystemType(root + "/file") }
        symlink("/sys/fs/cgroup", root + "/link")
        #expect(throws: SystemError("lstat \(root)/link", errno: ENOTDIR)) { try folderFilesystemType(root + "/link") }
        #expect(throws: SystemError("lstat \(root)/missing", errno: ENOENT)) { try folderFilesystemType(root + "/missing") }

        // Every cgroup mount of this machine reads as its own kind.
        let mountinfo = String(decoding: readFile("/proc/self/mountinfo") ?? [], as: UTF8.self)
        let cgroupMounts = mountinfo.split(separator: "\n").compactMap { line -> (String, Int)? in
            let f = line.split(separator: " ")
            guard let dash = f.firstIndex(of: "-"), dash + 1 < f.count, dash > 4 else { return nil }
            switch f[dash + 1] {
            case "cgroup": return (String(f[4]), CgroupMagic.v1)
            case "cgroup2": return (String(f[4]), CgroupMagic.v2)
            default: return nil
            }
        }
        try #require(!cgroupMounts.isEmpty, "no cgroup file system mounted:\n\(mountinfo)")
        for (point, magic) in cgroupMounts {
            #expect(try folderFilesystemType(point) == magic, "\(point)")
        }
    }
}
