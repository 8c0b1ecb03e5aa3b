import PMLCore
import Testing

/// The one reading of an app file's tables that check, start, reload and re-binding share.
@Suite struct AppFileSpecsTests {
    let file: ScriptValue = .array([
        .object(["name": .string("web"), "cmd": .array([.string("node"), .string("web.js")]),
                 "env": .object(["A": .string("1")]), "env_prod": .object(["B": .string("2")])]),
        .object(["name": .string("api"), "cmd": .array([.string("node"), .string("api.js")]), "watch": .bool(false)]),
    ])

    @Test func startArgumentsApplyAndEachSpecNamesItsFile() throws {
        var args = StartArguments(env: ["C": "3"], instances: .int(2), clientEnv: [:], clientCwd: "/")
        args.watch = true
        args.envName = "prod"
        let specs = try AppSpecParser.appFile("/srv/app.lua", value: file, source: nil, cpuCount: 4, startedWith: args)
        #expect(specs.map(\.name) == ["web", "api"])
        #expect(specs.allSatisfy { $0.appFile == "/srv/app.lua" && $0.instances == 2 && $0.cwd == "/srv" })
        #expect(specs[0].env == ["A": "1", "B": "2", "C": "3"], "the env set and --env K=V merged")
        #expect(specs[0].watch != nil && specs[1].watch == nil, "--watch only where the file says nothing")
        let plain = try AppSpecParser.appFile("/srv/app.lua", value: file, source: nil, cpuCount: 4, startedWith: nil)
        #expect(plain[0].env == ["A": "1"] && plain[0].instances == 1)
    }

    @Test func overridesAreValidatedLikeTheFile() {
        let args = StartArguments(instances: .string("lots"), clientEnv: [:], clientCwd: "/")
        #expect(throws: AppFileError.self) {
            try AppSpecParser.appFile("/srv/app.lua", value: file, source: nil, cpuCount: 4, startedWith: args)
        }
    }
}
