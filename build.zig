const std = @import("std");

pub fn build(b: *std.Build) void {
    // Baseline CPU of this machine's architecture by default: the wheel must run on CPUs other than
    // the builder's. -Dtarget=aarch64-linux cross-compiles (-Dcpu=baseline is then the default).
    const target = b.standardTargetOptions(.{ .default_target = .{ .cpu_model = .baseline } });
    const optimize = b.standardOptimizeOption(.{});
    const strip = b.option(bool, "strip", "strip debug info") orelse (optimize != .debug);
    const module = b.createModule(.{
        .root_source_file = b.path("zig/root.zig"),
        .target = target,
        .optimize = optimize,
        .strip = strip,
    });
    const library = b.addLibrary(.{ .name = "raindrops", .linkage = .dynamic, .root_module = module });
    b.installArtifact(library);

    // The tests build for -Dtarget too: `zig build test -Dtarget=aarch64-linux -fqemu`
    // runs them under qemu-aarch64 (static binaries, no libc, so qemu-user needs no sysroot).
    const test_module = b.createModule(.{
        .root_source_file = b.path("zig/root.zig"),
        .target = target,
        .optimize = .Debug,
    });
    const tests = b.addTest(.{ .root_module = test_module, .use_llvm = true });
    const run_tests = b.addRunArtifact(tests);
    run_tests.has_side_effects = true;
    b.step("test", "Run the Zig unit tests").dependOn(&run_tests.step);
}
