import PMLCore
import Testing
#if canImport(Glibc)
import Glibc
#endif
@testable import PMLLua

@Suite struct EvaluationTests {
    let folder = FixtureFolder()

    @Test func singleAppTable() throws {
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath])
        let source = """
        return {
          name = "web",
          cmd = { "node", "server.js" },
          instances = 4,
          ratio = 0.5,
          env = { NODE_ENV = "production" },
          onCrash = function(worker, exit) return false end,
        }
        """
        let file = try runtime.evaluateAppFile(path: folder.write("app.lua", source))
        #expect(file.path == folder.path + "/app.lua")
        #expect(file.source == source)
        #expect(file.tableRefs.count == 1)
        #expect(file.value == .object([
            "name": .string("web"),
            "cmd": .array([.string("node"), .string("server.js")]),
            "instances": .int(4),
            "ratio": .double(0.5),
            "env": .object(["NODE_ENV": .string("production")]),
            "onCrash": .function,
        ]))
    }

    @Test func listOfApps() throws {
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath])
        let file = try load(runtime, folder, """
        return {
          { name = "api", cmd = "./api", onStart = function() return "api started" end },
          { name = "worker", cmd = "./worker", onStart = function() return "worker started" end },
        }
        """)
        #expect(file.tableRefs.count == 2)
        guard case .array(let apps) = file.value else { Issue.record("not a list: \(file.value)"); return }
        #expect(apps.map { $0["name"] } == [.string("api"), .string("worker")])
        #expect(runtime.callHook(app: "api", hook: "onStart", args: []) == .returned(.string("api started")))
        #expect(runtime.callHook(app: "worker", hook: "onStart", args: []) == .returned(.string("worker started")))
    }

    @Test func relativePathIsMadeAbsolute() throws {
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath])
        folder.write("rel.lua", "return { name = 'rel' }")
        // Relative to the working directory, without changing it (tests run in parallel).
        let cwd = getcwd(nil, 0)!
        defer { free(cwd) }
        let up = String(cString: cwd).split(separator: "/").map { _ in ".." }.joined(separator: "/")
        let relative = (up.isEmpty ? "." : up) + "/./" + folder.path.dropFirst() + "/rel.lua"
        let file = try runtime.evaluateAppFile(path: relative)
        #expect(file.path == folder.path + "/rel.lua")
    }

    @Test func syntaxErrorHasItsLine() throws {
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath])
        let path = folder.write("app.lua", "return {\n  name = \"web\",\n  cmd = = 3,\n}\n")
        let error = #expect(throws: AppFileError.self) { try runtime.evaluateAppFile(path: path) }
        #expect(error?.file == path)
        #expect(error?.line == 3)
        #expect(error?.message.contains("unexpected symbol near '='") == true)
    }

    @Test func runtimeErrorHasItsLine() throws {
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath])
        let path = folder.write("app.lua", "local cfg = nil\n\nlocal port = cfg.port\nreturn { name = 'x' }\n")
        let error = #expect(throws: AppFileError.self) { try runtime.evaluateAppFile(path: path) }
        #expect(error?.line == 3)
        #expect(error?.message.hasPrefix("attempt to index a nil value") == true)
        #expect(error?.description == "\(path):3: \(error?.message ?? "")")
    }

    @Test func errorCalledWithATable() throws {
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath])
        let path = folder.write("app.lua", "error({ code = 1 })")
        let error = #expect(throws: AppFileError.self) { try runtime.evaluateAppFile(path: path) }
        #expect(error == AppFileError(file: path, message: "(error object is a table value)"))
    }

    @Test func longPathsAreStillLocated() throws {
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath])
        let deep = "a-rather-long-folder-name/another-rather-long-folder-name/and-one-more/app.lua"
        let path = folder.write(deep, "return {\n  name = ,\n}")
        let error = #expect(throws: AppFileError.self) { try runtime.evaluateAppFile(path: path) }
        #expect(error?.file == path)
        #expect(error?.line == 2)
    }

    @Test func missingFileCannotBeRead() throws {
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath])
        let path = folder.path + "/nope.lua"
        let error = #expect(throws: AppFileError.self) { try runtime.evaluateAppFile(path: path) }
        #expect(error == AppFileError(file: path, line: nil, message: "cannot read: No such file or directory"))
        let dir = #expect(throws: AppFileError.self) { try runtime.evaluateAppFile(path: folder.path) }
        #expect(dir?.message == "cannot read: Is a directory")
    }

    @Test func shebangLineKeepsLineNumbers() throws {
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath])
        let path = folder.write("app.lua", "#!/usr/bin/env pml run\nlocal x = nil\nreturn x.y\n")
        let error = #expect(throws: AppFileError.self) { try runtime.evaluateAppFile(path: path) }
        #expect(error?.line == 3)
    }

    @Test func binaryChunksAreRefused() throws {
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath])
        let path = folder.write("app.lua", "\u{1B}Lua")
        let error = #expect(throws: AppFileError.self) { try runtime.evaluateAppFile(path: path) }
        #expect(error?.message.contains("binary chunk") == true)
    }

    @Test func nonTableResultHasNoRefs() throws {
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath])
        let file = try runtime.evaluateAppFile(path: folder.write("app.lua", "return 42"))
        #expect(file.value == .int(42))
        #expect(file.tableRefs.isEmpty)
    }

    @Test func requireSearchesLibraryThenAppFolder() throws {
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath])
        folder.write("helper.lua", "return { port = function() return 8080 end }")
        folder.write("lib/init.lua", "return { answer = 42 }")
        try load(runtime, folder, """
        local helper = require "helper"
        local lib = require "lib"
        local policy = require "pml.policy"
        return {
          name = "web",
          probe = function()
            return { helper.port(), lib.answer, type(policy.restart), require("helper") == helper }
          end,
          missing = function() local m = require "no.such.module"; return m end,
        }
        """)
        #expect(runtime.callHook(app: "web", hook: "probe", args: []) ==
            .returned(.array([.int(8080), .int(42), .string("function"), .bool(true)])))
        guard case .failed(let message) = runtime.callHook(app: "web", hook: "missing", args: []) else {
            Issue.record("require of a missing module did not fail"); return
        }
        #expect(message.hasPrefix(folder.path + "/app.lua:9: module 'no.such.module' not found:"))
    }

    @Test func errorInRequiredModuleKeepsItsOwnLocation() throws {
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath])
        let helper = folder.write("broken.lua", "local x\nreturn x.field\n")
        let path = folder.write("app.lua", "return require 'broken'")
        let error = #expect(throws: AppFileError.self) { try runtime.evaluateAppFile(path: path) }
        #expect(error?.line == nil)
        #expect(error?.message.hasPrefix("\(helper):2: attempt to index a nil value") == true)
    }

    @Test func locateParsesOnlyTheAppFilesLocation() {
        #expect(LuaRuntime.locate("app.lua:12: boom", in: "app.lua") == AppFileError(file: "app.lua", line: 12, message: "boom"))
        #expect(LuaRuntime.locate("other.lua:12: boom", in: "app.lua") == AppFileError(file: "app.lua", message: "other.lua:12: boom"))
        #expect(LuaRuntime.locate("...deep/app.lua:4: x", in: "/very/long/deep/app.lua") ==
            AppFileError(file: "/very/long/deep/app.lua", line: 4, message: "x"))
        #expect(LuaRuntime.locate("not enough memory", in: "app.lua") == AppFileError(file: "app.lua", message: "not enough memory"))
    }
}
