import PMLCore
import Testing

@Suite("CPU cgroup of the daemon")
struct CPUCgroupTests {
    static let hybridMounts = """
        31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
        32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
        33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
        35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
        41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
        """

    @Test("v1 cpu at the root of its own mount (this machine and CI): the mount point itself")
    func rootCgroup() {
        let cgroup = "4:memory:/process_api/ad59\n2:cpuacct:/\n1:cpu:/\n0::/\n"
        #expect(CPUCgroup.v1Directory(procCgroup: cgroup, mountinfo: Self.hybridMounts) == "/sys/fs/cgroup/cpu")
    }

    @Test("a nested cgroup of a co-mounted cpu,cpuacct hierarchy, with optional mountinfo fields")
    func nestedCoMounted() {
        let mounts = """
            25 24 0:22 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:9 master:2 - cgroup cgroup rw,cpu,cpuacct
            26 24 0:23 / /sys/fs/cgroup/cpuset rw shared:10 - cgroup cgroup rw,cpuset
            """
        let cgroup = "5:cpuset:/\n3:cpu,cpuacct:/system.slice/pml.service\n"
        #expect(CPUCgroup.v1Directory(procCgroup: cgroup, mountinfo: mounts)
                == "/sys/fs/cgroup/cpu,cpuacct/system.slice/pml.service")
    }

    @Test("a container whose mount shows only its own subtree: the path is taken relative to the mount's root")
    func containerMount() {
        let mounts = "700 690 0:29 /docker/abc /sys/fs/cgroup/cpu ro,nosuid - cgroup cgroup rw,cpu\n"
        #expect(CPUCgroup.v1Directory(procCgroup: "1:cpu:/docker/abc\n", mountinfo: mounts) == "/sys/fs/cgroup/cpu")
        #expect(CPUCgroup.v1Directory(procCgroup: "1:cpu:/docker/abc/x\n", mountinfo: mounts) == "/sys/fs/cgroup/cpu/x")
        #expect(CPUCgroup.v1Directory(procCgroup: "1:cpu:/docker/abcdef\n", mountinfo: mounts) == nil,
                "a sibling with the same prefix is not under the mount")
        #expect(CPUCgroup.v1Directory(procCgroup: "1:cpu:/other\n", mountinfo: mounts) == nil)
    }

    @Test("mount points with escaped spaces are unescaped; a malformed escape stays as it is")
    func escapes() {
        let mounts = "32 31 0:29 / /mnt/cg\\040cpu rw - cgroup cgroup rw,cpu\n"
        #expect(CPUCgroup.v1Directory(procCgroup: "1:cpu:/a\n", mountinfo: mounts) == "/mnt/cg cpu/a")
        let odd = "32 31 0:29 / /mnt/x\\09y rw - cgroup cgroup rw,cpu\n"
        #expect(CPUCgroup.v1Directory(procCgroup: "1:cpu:/\n", mountinfo: odd) == "/mnt/x\\09y")
    }

    @Test("cgroup v2 only, cpuacct without cpu, a cpu hierarchy that is not mounted, garbage: nil")
    func none() {
        let v2 = "30 23 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
        #expect(CPUCgroup.v1Directory(procCgroup: "0::/user.slice/user-1000.slice\n", mountinfo: v2) == nil)
        #expect(CPUCgroup.v1Directory(procCgroup: "2:cpuacct:/\n", mountinfo: Self.hybridMounts) == nil)
        let noCPUMount = Self.hybridMounts.split(separator: "\n").filter { !$0.contains(" /sys/fs/cgroup/cpu ") }.joined(separator: "\n")
        #expect(CPUCgroup.v1Directory(procCgroup: "1:cpu:/\n", mountinfo: noCPUMount) == nil)
        #expect(CPUCgroup.v1Directory(procCgroup: "1:cpu\n:\n", mountinfo: Self.hybridMounts) == nil)
        #expect(CPUCgroup.v1Directory(procCgroup: "1:cpu:relative\n", mountinfo: Self.hybridMounts) == nil)
        #expect(CPUCgroup.v1Directory(procCgroup: "1:cpu:/\n", mountinfo: "- cgroup cgroup rw,cpu\n1 2 - x\n") == nil)
    }

    @Test("a cgroup outside the namespace (/../x), . or .. anywhere, in the path or the mount: refused, never joined")
    func outsideTheTree() {
        #expect(CPUCgroup.v1Directory(procCgroup: "1:cpu:/../x\n", mountinfo: Self.hybridMounts) == nil,
                "not /sys/fs/cgroup/cpu/../x")
        for path in ["/a/../../etc", "/a/./b", "/..", "/.", "/a/..", "//a", "/a//b", "/a/", ""] {
            #expect(CPUCgroup.v1Directory(procCgroup: "1:cpu:\(path)\n", mountinfo: Self.hybridMounts) == nil, "\(path)")
        }
        let dottedRoot = "700 690 0:29 /.. /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"
        #expect(CPUCgroup.v1Directory(procCgroup: "1:cpu:/../x\n", mountinfo: dottedRoot) == nil)
        let dottedPoint = "32 31 0:29 / /sys/fs/cgroup/../tmp rw - cgroup cgroup rw,cpu\n"
        #expect(CPUCgroup.v1Directory(procCgroup: "1:cpu:/a\n", mountinfo: dottedPoint) == nil)
        #expect(CPUCgroup.isPlainAbsolute("/") && CPUCgroup.isPlainAbsolute("/a.b/..c/c..") && !CPUCgroup.isPlainAbsolute("a/b"))
    }
}
