//! The monotonic clock, read through the kernel's vDSO (tens of nanoseconds) instead of a
//! system call (hundreds).
//!
//! Zig's `std.os.linux.clock_gettime` finds the vDSO through `getauxval`, which a library
//! built without libc must bring itself. This one reads the process's auxiliary vector from
//! /proc/self/auxv, once: it is not exported (hidden), so it answers only this library and
//! the library keeps no undefined dynamic symbol. Without the file (no /proc) it answers 0,
//! and the clock falls back to the system call: slower, never wrong.
const std = @import("std");
const builtin = @import("builtin");
const assert = std.debug.assert;
const linux = std.os.linux;
const status = @import("status.zig");

const auxv_path = "/proc/self/auxv";
/// Entries read from the auxiliary vector, at most; Linux writes about 25.
const auxv_entries_max = 64;
const Auxv = std.elf.Auxv;

comptime {
    if (!builtin.is_test) @export(&getauxval, .{ .name = "getauxval", .visibility = .hidden });
}

fn getauxval(index: usize) callconv(.c) usize {
    var entries: [auxv_entries_max]Auxv = undefined;
    const count = readAuxv(&entries);
    return auxvValue(entries[0..count], index);
}

fn readAuxv(entries: *[auxv_entries_max]Auxv) usize {
    const rc = linux.open(auxv_path, .{ .ACCMODE = .RDONLY, .CLOEXEC = true }, 0);
    if (status.fromSyscall(rc) != status.ok) return 0;
    const fd: i32 = @intCast(rc);
    defer _ = linux.close(fd);
    const bytes = std.mem.sliceAsBytes(entries);
    const read_rc = linux.read(fd, bytes.ptr, bytes.len);
    if (status.fromSyscall(read_rc) != status.ok) return 0;
    assert(read_rc <= bytes.len);
    return read_rc / @sizeOf(Auxv);
}

/// The value of entry `index` of an auxiliary vector, 0 when absent (as getauxval(3)).
fn auxvValue(entries: []const Auxv, index: usize) usize {
    assert(entries.len <= auxv_entries_max);
    for (entries) |entry| {
        if (entry.a_type == std.elf.AT.NULL) return 0;
        if (entry.a_type == index) return entry.a_un.a_val;
    }
    return 0;
}

pub fn monotonicNs() u64 {
    var now: linux.timespec = undefined;
    const rc = linux.clock_gettime(.MONOTONIC, &now);
    assert(status.fromSyscall(rc) == status.ok);
    return @as(u64, @intCast(now.sec)) * std.time.ns_per_s + @as(u64, @intCast(now.nsec));
}

/// Whether the kernel maps a vDSO into this process and the clock can find it there.
pub fn vdsoPresent() bool {
    return getauxval(std.elf.AT.SYSINFO_EHDR) != 0;
}

test "auxvValue finds an entry, stops at AT_NULL, answers 0 for an absent one" {
    const entries = [_]Auxv{
        .{ .a_type = std.elf.AT.PAGESZ, .a_un = .{ .a_val = 4096 } },
        .{ .a_type = std.elf.AT.NULL, .a_un = .{ .a_val = 0 } },
        .{ .a_type = 33, .a_un = .{ .a_val = 7 } },
    };
    try std.testing.expectEqual(@as(usize, 4096), auxvValue(&entries, std.elf.AT.PAGESZ));
    try std.testing.expectEqual(@as(usize, 0), auxvValue(&entries, 33));
    try std.testing.expectEqual(@as(usize, 0), auxvValue(entries[0..0], std.elf.AT.PAGESZ));
}

test "the monotonic clock does not go back" {
    const first = monotonicNs();
    const second = monotonicNs();
    try std.testing.expect(second >= first);
}
