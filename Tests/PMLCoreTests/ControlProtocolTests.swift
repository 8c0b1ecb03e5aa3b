import FoundationEssentials
import Testing
@testable import PMLCore

@Suite struct ControlProtocolTests {
    @Test func requestRoundTripsWithVersion() throws {
        let args = StartArguments(file: "/a/app.lua", env: ["K": "V"], instances: .string("max"), clientEnv: ["PATH": "/bin"], clientCwd: "/a")
        let request = ControlRequest(cmd: .start, start: args)
        let data = try JSONEncoder().encode(request)
        let text = String(decoding: data, as: UTF8.self)
        #expect(text.contains("\"v\":1"))
        #expect(text.contains("\"client_env\""))
        #expect(try JSONDecoder().decode(ControlRequest.self, from: data) == request)
    }

    @Test func unknownCommandDoesNotDecode() {
        let line = Data(#"{"v":1,"cmd":"format-disk"}"#.utf8)
        #expect(throws: (any Error).self) { try JSONDecoder().decode(ControlRequest.self, from: line) }
    }

    @Test func rowsUseSnakeCase() throws {
        let row = ProcessRow(id: 1, name: "web", instance: 0, mode: "fork", pid: 42, status: .online, restarts: 2,
                             uptimeMs: 1500, cpu: 1.5, memory: 1024)
        let text = String(decoding: try JSONEncoder().encode(row), as: UTF8.self)
        #expect(text.contains("\"uptime_ms\":1500"))
        #expect(text.contains("\"status\":\"online\""))
    }

    @Test func absentValuesAreNull() throws {
        let row = ProcessRow(id: 1, name: "web", instance: 0, mode: "fork", pid: nil, status: .stopped, restarts: 0,
                             uptimeMs: nil, cpu: 0, memory: 0)
        let text = String(decoding: try JSONEncoder().encode(row), as: UTF8.self)
        #expect(text.contains("\"pid\":null") && text.contains("\"uptime_ms\":null"))
        #expect(try JSONDecoder().decode(ProcessRow.self, from: Data(text.utf8)) == row)
        let plugin = String(decoding: try JSONEncoder().encode(PluginInfo(name: nil, path: "/p.lua", hooks: [], error: "x")), as: UTF8.self)
        #expect(plugin.contains("\"name\":null"))
    }

    @Test func scriptValuesRoundTripThroughJSON() throws {
        let value = ScriptValue.object(["a": .array([.int(1), .double(2.5), .string("x"), .bool(true), .null])])
        let data = try JSONEncoder().encode(value)
        #expect(try JSONDecoder().decode(ScriptValue.self, from: data) == value)
        #expect(try JSONDecoder().decode(ScriptValue.self, from: Data(#""ready""#.utf8)) == .string("ready"))
    }

    @Test func exitInfoAsHookArgument() {
        #expect(ExitInfo(code: 3, signal: nil, uptimeMs: 10).scriptValue == .object(["code": .int(3), "uptime": .int(10)]))
        #expect(ExitInfo(code: nil, signal: "SIGKILL", uptimeMs: 1).summary == "killed by SIGKILL")
    }

    @Test func pathsFollowPMLHome() {
        #expect(PMLPaths.fromEnvironment(["PML_HOME": "/x"], accountHome: "/a").socket == "/x/pml.sock")
        #expect(PMLPaths.fromEnvironment(["HOME": "/home/u"], accountHome: "/a").errLog("web") == "/home/u/.pml/logs/web-err.log")
    }
}

@Suite struct HomeTests {
    @Test func homeComesFromPMLHomeThenHomeThenTheAccount() {
        #expect(PMLPaths.fromEnvironment(["PML_HOME": "/x", "HOME": "/h"], accountHome: "/a").home == "/x")
        #expect(PMLPaths.fromEnvironment(["PML_HOME": "", "HOME": "/h"], accountHome: "/a").home == "/h/.pml")
        #expect(PMLPaths.fromEnvironment(["HOME": ""], accountHome: "/a").home == "/a/.pml")
        // Never a shared /tmp/.pml.
        #expect(PMLPaths.fromEnvironment([:], accountHome: "/home/u").home == "/home/u/.pml")
        #expect(PMLPaths.fromEnvironment([:], accountHome: nil).home == "")
    }

    @Test func aHomeMustBeThisUsersPrivateFolder() {
        func problem(exists: Bool = true, dir: Bool = true, owner: UInt32 = 1000, mode: UInt32 = 0o40700, home: String = "/h") -> String? {
            PMLPaths.homeProblem(home, exists: exists, isDirectory: dir, owner: owner, mode: mode, user: 1000)
        }
        #expect(problem() == nil)
        #expect(problem(mode: 0o40755) == nil)
        #expect(problem(exists: false) == nil)
        #expect(problem(home: "") == "no home folder is known for this user: set PML_HOME (or HOME)")
        #expect(problem(dir: false) == "/h (PML_HOME) is not a folder")
        #expect(problem(owner: 0) == "/h (PML_HOME) belongs to another user (uid 0); use a folder of your own")
        #expect(problem(mode: 0o40770) == "/h (PML_HOME) is writable by other users (mode 770); chmod 700 it")
        #expect(problem(mode: 0o41777) == "/h (PML_HOME) is writable by other users (mode 777); chmod 700 it")
        #expect(problem(mode: 0o40702) != nil)
    }
}
