import Glibc
import PMLPosix
import Testing

/// FileWatcher against the real kernel: trees, single files, the folder cap, queue overflow.
@Suite struct FileWatcherTests {
    let root: String

    init() {
        var template = Array("/tmp/pml-fw-XXXXXX".utf8CString)
        root = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    }

    func write(_ name: String, _ text: String = "x") {
        let fd = open(root + "/" + name, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        _ = text.withCString { Glibc.write(fd, $0, strlen($0)) }
        close(fd)
    }

    func cleanUp() {
        _ = system("rm -rf '\(root)'")
    }

    @Test func treeFilesAndIgnores() throws {
        defer { cleanUp() }
        mkdir(root + "/src", 0o755)
        mkdir(root + "/skip", 0o755)
        write("only.conf")
        let watcher = try FileWatcher(paths: [root + "/src", root + "/only.conf"], maxDirectories: 10) { $0.hasSuffix(".tmp") }
        #expect(watcher.watchedFolders == 2)
        write("src/a.js")
        write("src/a.tmp")
        write("other.conf")
        write("only.conf", "changed")
        let changes = Set(watcher.readChanges())
        #expect(changes == [root + "/src/a.js", root + "/only.conf"])
        mkdir(root + "/src/new", 0o755)
        #expect(watcher.readChanges() == [root + "/src/new"])
        write("src/new/deep.js")
        #expect(watcher.readChanges().contains(root + "/src/new/deep.js"))
        #expect(watcher.readChanges().isEmpty)
    }

    @Test func capAndMissingPathsAreErrors() {
        defer { cleanUp() }
        for i in 0..<5 { mkdir(root + "/d\(i)", 0o755) }
        #expect(throws: WatchError.self) { try FileWatcher(paths: [root], maxDirectories: 5) { _ in false } }
        do {
            _ = try FileWatcher(paths: [root + "/nope"], maxDirectories: 5) { _ in false }
            Issue.record("a missing path was watched")
        } catch {
            #expect(error.description.contains("nope") && error.description.contains("No such file"), "\(error)")
        }
    }

    @Test func queueOverflowIsReportedAndWatchingGoesOn() throws {
        defer { cleanUp() }
        write("a")
        write("b")
        let watcher = try FileWatcher(paths: [root], maxDirectories: 10) { _ in false }
        let a = open(root + "/a", O_WRONLY), b = open(root + "/b", O_WRONLY)
        defer { close(a); close(b) }
        // Alternating files: identical events in a row are merged by the kernel, these are not.
        let queue = Int(String(decoding: readFile("/proc/sys/fs/inotify/max_queued_events") ?? [], as: UTF8.self)
            .split(separator: "\n").first ?? "") ?? 16384
        for _ in 0...(queue / 2 + 10) {
            _ = pwrite(a, "x", 1, 0)
            _ = pwrite(b, "x", 1, 0)
        }
        var all: [String] = []
        for _ in 0..<50 {
            let batch = watcher.readChanges()
            if batch.isEmpty { break }
            all += batch
        }
        #expect(all.contains { $0.contains("overflowed") })
        write("after")
        #expect(watcher.readChanges().contains(root + "/after"))
    }
}
