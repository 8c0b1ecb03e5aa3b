import PMLCore
import PMLLua
import Testing

/// lua/pml/autoscale.lua, as app files use it through `pml.autoscale`.
@Suite struct AutoscaleTests {
    let folder = FixtureFolder()

    /// The metrics a rule receives.
    private func m(_ instances: Int, cpu: Double? = nil, rps: Double? = nil, metrics: [String: ScriptValue]? = nil) -> ScriptValue {
        var fields: [String: ScriptValue] = ["instances": .int(Int64(instances)), "workers": .array([])]
        if let cpu { fields["cpu"] = .double(cpu) }
        if let rps { fields["rps"] = .double(rps) }
        if let metrics { fields["metrics"] = .object(metrics) }
        return .object(fields)
    }

    /// An app whose `rules.<name>` hooks are the rules under test, and `autoscale.rule` the first.
    private func runtime() throws -> LuaRuntime {
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath])
        try load(runtime, folder, """
        local target, step = pml.autoscale.target, require("pml.autoscale").step
        return {
          name = "web",
          autoscale = { min = 1, max = 8, rule = target{ metric = "cpu", value = 60 } },
          rules = {
            cpu = target{ metric = "cpu", value = 60 },
            queue = target{ metric = "queue", value = 0.3 },
            stepCpu = step{ metric = "cpu", up = 70, down = 20 },
            stepQueue = step{ metric = "queue", up = 100, down = 10, by = 2 },
          },
        }
        """)
        return runtime
    }

    @Test func targetTracksCpu() throws {
        let runtime = try runtime()
        let cases: [(m: ScriptValue, want: ScriptValue)] = [
            (m(4, cpu: 90), .int(6)),
            (m(4, cpu: 20), .int(2)),
            (m(4, cpu: 60), .int(4)),
            (m(4, cpu: 61), .int(5)),
            (m(3, cpu: 0), .int(1)),
            (m(0, cpu: 50), .int(1)),
            (m(4), .null),
            (m(4, cpu: .nan), .null),
            (m(4, cpu: .infinity), .null),
        ]
        for c in cases {
            #expect(runtime.callHook(app: "web", hook: "rules.cpu", args: [c.m]) == .returned(c.want), "\(c.m)")
        }
        // The rule in the nested autoscale table is reached as the daemon calls it.
        #expect(runtime.callHook(app: "web", hook: "autoscale.rule", args: [m(4, cpu: 90)]) == .returned(.int(6)))
    }

    @Test func targetTracksACustomMetric() throws {
        let runtime = try runtime()
        let cases: [(m: ScriptValue, want: ScriptValue)] = [
            (m(2, metrics: ["queue": .double(0.9)]), .int(6)),
            // 4 * 0.3 / 0.3 is 4.000000000000001 in floats: no fifth worker for rounding noise.
            (m(4, metrics: ["queue": .double(0.3)]), .int(4)),
            (m(4, metrics: ["queue": .int(0)]), .int(1)),
            (m(4, metrics: [:]), .null),
            (m(4, metrics: ["queue": .string("lots")]), .null),
            (m(4), .null),
        ]
        for c in cases {
            #expect(runtime.callHook(app: "web", hook: "rules.queue", args: [c.m]) == .returned(c.want), "\(c.m)")
        }
    }

    @Test func stepAddsAndRemovesWorkers() throws {
        let runtime = try runtime()
        let cpu: [(m: ScriptValue, want: ScriptValue)] = [
            (m(3, cpu: 80), .int(4)),
            (m(3, cpu: 10), .int(2)),
            (m(3, cpu: 50), .null),
            (m(3, cpu: 70), .null),
            (m(3, cpu: 20), .null),
            (m(1, cpu: 5), .int(1)),
            (m(3, rps: 900), .null),
        ]
        for c in cpu {
            #expect(runtime.callHook(app: "web", hook: "rules.stepCpu", args: [c.m]) == .returned(c.want), "\(c.m)")
        }
        let queue: [(m: ScriptValue, want: ScriptValue)] = [
            (m(3, metrics: ["queue": .int(150)]), .int(5)),
            (m(3, metrics: ["queue": .int(5)]), .int(1)),
            (m(2, metrics: ["queue": .int(5)]), .int(1)),
            (m(3, metrics: ["queue": .int(50)]), .null),
            (m(3, metrics: ["other": .int(500)]), .null),
        ]
        for c in queue {
            #expect(runtime.callHook(app: "web", hook: "rules.stepQueue", args: [c.m]) == .returned(c.want), "\(c.m)")
        }
    }

    @Test func aBuiltInMetricWinsOverACustomOneOfTheSameName() throws {
        let runtime = try runtime()
        #expect(runtime.callHook(app: "web", hook: "rules.cpu", args: [m(2, cpu: 90, metrics: ["cpu": .int(10)])]) ==
            .returned(.int(3)))
    }

    @Test func badOptionsRaiseAtTheAppFilesLine() throws {
        let cases: [(lua: String, error: String)] = [
            ("pml.autoscale.target('cpu')", "pml.autoscale.target: expected a table of options (got string)"),
            ("pml.autoscale.target{ value = 60 }", "pml.autoscale.target: metric must be a non-empty string (got nil)"),
            ("pml.autoscale.target{ metric = '', value = 60 }", "pml.autoscale.target: metric must be a non-empty string (got \"\")"),
            ("pml.autoscale.target{ metric = 'cpu' }", "pml.autoscale.target: value must be a number > 0"),
            ("pml.autoscale.target{ metric = 'cpu', value = 0 }", "pml.autoscale.target: value must be a number > 0"),
            ("pml.autoscale.target{ metric = 'cpu', value = 0/0 }", "pml.autoscale.target: value must be a number > 0"),
            ("pml.autoscale.step()", "pml.autoscale.step: expected a table of options (got nil)"),
            ("pml.autoscale.step{ metric = 'cpu', up = 70 }", "pml.autoscale.step: up and down must be numbers"),
            ("pml.autoscale.step{ metric = 'cpu', up = 20, down = 70 }", "pml.autoscale.step: down must be below up"),
            ("pml.autoscale.step{ metric = 'cpu', up = 70, down = 20, by = 0 }", "pml.autoscale.step: by must be an integer >= 1"),
            ("pml.autoscale.step{ metric = 'cpu', up = 70, down = 20, by = 1.5 }", "pml.autoscale.step: by must be an integer >= 1"),
            ("pml.autoscale.step{ metric = 'cpu', up = 70, down = 20, by = '2' }", "pml.autoscale.step: by must be an integer >= 1"),
        ]
        try expectEachFails(try LuaRuntime(libraryPaths: [repoLuaPath]), folder, cases)
    }

    @Test func pmlAutoscaleIsRequireAndPerEnvironment() throws {
        let runtime = try LuaRuntime(libraryPaths: [repoLuaPath])
        try load(runtime, folder, """
        local same = pml.autoscale == require("pml.autoscale")
        pml.autoscale.target = nil
        return { name = "a", probe = function() return { same, type(pml.autoscale.target) } end }
        """, as: "a.lua")
        try load(runtime, folder, """
        return { name = "b", probe = function() return { type(pml.autoscale.target), type(pml.autoscale.step) } end }
        """, as: "b.lua")
        #expect(runtime.callHook(app: "a", hook: "probe", args: []) == .returned(.array([.bool(true), .string("nil")])))
        #expect(runtime.callHook(app: "b", hook: "probe", args: []) == .returned(.array([.string("function"), .string("function")])))
    }
}
