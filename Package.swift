// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "pml",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "pml", targets: ["pml"]),
        // Reads YAML ecosystem files for pml (Yams brings Foundation, which pml itself does without).
        .executable(name: "pml-yaml", targets: ["pml-yaml"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
    ],
    targets: [
        // Lua 5.4 from Debian's liblua5.4-dev.
        .systemLibrary(
            name: "CLua",
            pkgConfig: "lua5.4",
            providers: [.apt(["liblua5.4-dev"])]
        ),
        // Lua's function-like macros, the sandboxing allocator and the budget hook.
        .target(name: "CLuaShim", dependencies: ["CLua"]),
        // GNU/Linux calls Swift's Glibc module cannot see (epoll, signalfd, accept4, spawn, SCM_RIGHTS).
        .target(name: "CSystemShim", cSettings: [.define("_GNU_SOURCE")]),
        // Pure model: app specs, worker lifecycle, restart bookkeeping, control protocol. No I/O.
        .target(name: "PMLCore"),
        // Thin POSIX layer: event loop, signals, spawning, sockets, /proc.
        .target(name: "PMLPosix", dependencies: ["CSystemShim"]),
        // The embedded Lua runtime and the `pml` API scripts see.
        .target(name: "PMLLua", dependencies: ["CLuaShim", "PMLCore"]),
        // The supervisor: wires core, POSIX and Lua together.
        .target(name: "PMLDaemon", dependencies: [
            "PMLCore", "PMLPosix", "PMLLua",
            .product(name: "Logging", package: "swift-log"),
        ]),
        // The command-line interface and the control-socket client.
        .target(name: "PMLCLI", dependencies: [
            "PMLCore", "PMLPosix", "PMLLua", "PMLDaemon",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .executableTarget(name: "pml", dependencies: ["PMLCLI"]),
        .executableTarget(name: "pml-yaml", dependencies: ["PMLCore", .product(name: "Yams", package: "Yams")]),
        .testTarget(name: "PMLCoreTests", dependencies: ["PMLCore"]),
        .testTarget(name: "PMLLuaTests", dependencies: ["PMLLua", "PMLCore"]),
        .testTarget(name: "PMLPosixTests", dependencies: ["PMLPosix"]),
        .testTarget(name: "IntegrationTests", dependencies: ["pml", "pml-yaml", "PMLCore"]),
    ],
    swiftLanguageModes: [.v6]
)
