// scripts/install.sh (issue 11): into a temporary prefix, the installed `<prefix>/bin/pml` says its
// version and commit, and, run from another working directory with nothing of the checkout around,
// finds its Lua library and Node preload under <prefix>/share/pml and runs apps.
// The test installs the binary this test run built (--binary): the release build itself takes
// minutes; the commit a release build bakes in comes from the same C define.

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

extension Integration {
    @Suite("Install")
    struct InstallTests {
        /// Runs a program to completion with a timeout; returns status, stdout, stderr.
        static func run(_ exe: String, _ args: [String], env: [String: String], cwd: String) async throws -> (Int32, String, String) {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: exe)
            p.arguments = args
            p.environment = env
            p.currentDirectoryURL = URL(fileURLWithPath: cwd)
            let tag = String(UInt32.random(in: 0..<UInt32.max), radix: 36)
            let outPath = NSTemporaryDirectory() + "pml-install-\(tag).out"
            let errPath = NSTemporaryDirectory() + "pml-install-\(tag).err"
            _ = FileManager.default.createFile(atPath: outPath, contents: nil)
            _ = FileManager.default.createFile(atPath: errPath, contents: nil)
            defer { unlink(outPath); unlink(errPath) }
            p.standardOutput = FileHandle(forWritingAtPath: outPath)
            p.standardError = FileHandle(forWritingAtPath: errPath)
            p.standardInput = FileHandle.nullDevice
            try p.run()
            let deadline = Date().addingTimeInterval(60)
            while p.isRunning {
                if Date() > deadline { kill(p.processIdentifier, SIGKILL); throw HarnessError("\(exe) \(args) timed out") }
                try await Task.sleep(nanoseconds: 20_000_000)
            }
            return (p.terminationStatus, (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? "",
                    (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? "")
        }

        @Test("install.sh --prefix: <prefix>/bin/pml --version, and an app started from another folder runs with the installed resources")
        func installIntoPrefix() async throws {
            try await withSandbox { box in
                let prefix = box.root + "/prefix"
                let script = PMLBinary.packageRoot.appendingPathComponent("scripts/install.sh").path
                var env = ProcessInfo.processInfo.environment
                env["PML_HOME"] = box.home
                env.removeValue(forKey: "PML_LUA_PATH")
                let (status, out, err) = try await Self.run("/bin/bash", [script, "--prefix", prefix, "--binary", box.binary], env: env, cwd: box.work)
                #expect(status == 0, "install.sh failed:\n\(out)\n\(err)")
                let pml = prefix + "/bin/pml"
                #expect(FileManager.default.isExecutableFile(atPath: pml))
                #expect(FileManager.default.isExecutableFile(atPath: prefix + "/bin/pml-yaml"))
                for resource in ["lua/pml/policy.lua", "shims/node/preload.js", "plugins/memory-limit.lua"] {
                    #expect(FileManager.default.fileExists(atPath: prefix + "/share/pml/" + resource), "\(resource) installed")
                }
                // Every resource folder the binary looks for, with the same files as the checkout's.
                for dir in ["lua", "shims", "plugins", "web"] {
                    let source = PMLBinary.packageRoot.appendingPathComponent(dir).path
                    guard FileManager.default.fileExists(atPath: source) else { continue }
                    let want = try FileManager.default.subpathsOfDirectory(atPath: source).sorted()
                    let got = (try? FileManager.default.subpathsOfDirectory(atPath: prefix + "/share/pml/" + dir).sorted()) ?? []
                    #expect(got == want, "\(dir)/ installed whole")
                }

                let (vs, version, _) = try await Self.run(pml, ["--version"], env: env, cwd: box.work)
                #expect(vs == 0)
                #expect(version.range(of: #"^\d+\.\d+\.\d+ \(commit ([0-9a-f]{7,}(-dirty)?|unknown)\)\n$"#, options: .regularExpression) != nil,
                        "version and commit: \(version)")

                // From a folder with nothing of pml in it: the installed binary finds share/pml by itself.
                let elsewhere = box.root + "/elsewhere"
                try FileManager.default.createDirectory(atPath: elsewhere, withIntermediateDirectories: true)
                try "require('http').createServer((q, s) => s.end('hi')).listen(0);\nsetInterval(() => {}, 1000);\n"
                    .write(toFile: elsewhere + "/server.js", atomically: true, encoding: .utf8)
                let (ss, sout, serr) = try await Self.run(pml, ["start", "server.js", "-i", "2"], env: env, cwd: elsewhere)
                #expect(ss == 0, "\(sout)\n\(serr)")
                try await box.waitOnline("server", count: 2)
                // A YAML ecosystem: read by the installed pml-yaml beside the installed pml.
                try "apps:\n  - name: yamled\n    script: server.js\n".write(toFile: elsewhere + "/ecosystem.yml", atomically: true, encoding: .utf8)
                let (ys, yout, yerr) = try await Self.run(pml, ["start", "ecosystem.yml"], env: env, cwd: elsewhere)
                #expect(ys == 0, "\(yout)\n\(yerr)")
                try await box.waitOnline("yamled")
                let log = box.read(box.daemonLog)
                #expect(log.contains("lua \(prefix)/share/pml/lua"), "the daemon uses the installed Lua library:\n\(log)")
                #expect(!log.contains("preload (shims/node/preload.js) is missing"), "\(log)")
                let (ks, _, _) = try await Self.run(pml, ["kill"], env: env, cwd: elsewhere)
                #expect(ks == 0)
            }
        }

        @Test("pml startup -u USER --hp HOME --service-name NAME: the unit runs as that user with that home's PML_HOME")
        func startupOptions() async throws {
            try await withSandbox { box in
                let r = try await box.pml("startup", "-u", "nobody", "--hp", "/srv/nobody", "--service-name", "apps")
                guard getuid() == 0 else {
                    return r.expectCleanFailure(mentioning: ["root"])
                }
                #expect(r.ok, "\(r)")
                let lines = r.stdout.split(separator: "\n").map(String.init)
                #expect(lines.first == "# /etc/systemd/system/apps.service", "\(r)")
                #expect(lines.contains("User=nobody") && lines.contains("Environment=PML_HOME=/srv/nobody/.pml"), "\(r)")
                try await box.pml("startup", "--hp", "relative").expectCleanFailure(mentioning: ["--hp"])
                try await box.pml("startup", "-u", "no-such-user-here").expectCleanFailure(mentioning: ["no-such-user-here"])
                try await box.pml("startup", "--service-name", "a/b").expectCleanFailure(mentioning: ["--service-name"])
                try await box.pml("startup", "launchd").expectCleanFailure(mentioning: ["systemd"])
            }
        }
    }
}
