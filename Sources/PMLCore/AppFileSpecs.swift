/// How app tables become specs for every caller — `pml check`, `pml start`, `pml reload` and the
/// re-binding after a Lua state was replaced — so all of them validate the same way.
extension AppSpecParser {
    /// Parses app tables with a start's command-line overrides applied first, so the overrides
    /// are validated like the file's own values.
    public func parse(_ value: ScriptValue, startedWith args: StartArguments?) throws(AppFileError) -> [AppSpec] {
        try parse(args.map { $0.applied(to: value) } ?? value)
    }

    /// What an evaluated app file at an absolute `path` declares, read as the start `args` read it
    /// (its `--name`, `-i`, `--env K=V`, `--env <name>`, `--watch`); each spec names the file.
    public static func appFile(_ path: String, value: ScriptValue, source: String?, cpuCount: Int,
                               startedWith args: StartArguments?) throws(AppFileError) -> [AppSpec] {
        let parser = forAppFile(path, source: source, cpuCount: cpuCount, envName: args?.envName)
        var specs = try parser.parse(value, startedWith: args)
        for i in specs.indices { specs[i].appFile = path }
        return specs
    }
}

extension StartArguments {
    /// The command-line overrides (`--name`, `-i`, `--env K=V`, `--watch`) applied to app tables.
    public func applied(to value: ScriptValue) -> ScriptValue {
        func one(_ v: ScriptValue) -> ScriptValue {
            guard case .object(var t) = v else { return v }
            if let name { t["name"] = .string(name) }
            if let instances { t["instances"] = instances }
            if watch == true, t["watch"] == nil { t["watch"] = .bool(true) }
            if !env.isEmpty {
                var merged: [String: ScriptValue] = [:]
                if case .object(let e)? = t["env"] { merged = e }
                for (k, v) in env { merged[k] = .string(v) }
                t["env"] = .object(merged)
            }
            return .object(t)
        }
        if case .array(let items) = value { return .array(items.map(one)) }
        return one(value)
    }
}
