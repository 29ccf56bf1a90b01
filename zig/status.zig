//! Status codes crossing the C ABI: 0 on success, -errno for a failed system
//! call, or one of the negative codes below for a segment that fails validation.
const std = @import("std");
const linux = std.os.linux;
const assert = std.debug.assert;

pub const Status = i32;

pub const ok: Status = 0;
/// The file is not a raindrops segment (wrong magic, wrong file type, empty).
pub const not_raindrops: Status = -4001;
/// A raindrops segment of another layout version.
pub const layout_mismatch: Status = -4002;
/// The file is shorter than its header says.
pub const truncated: Status = -4003;
/// The header holds impossible values (stride, capacity or size).
pub const corrupt: Status = -4004;
/// The file belongs to another user: they could poison or resize it at will.
pub const foreign_owner: Status = -4005;
/// Group or others may write the file: another user could poison it.
pub const writable_by_others: Status = -4006;

/// The validation codes in the order raindrops_status_code() reports them,
/// which raindrops/_native.py checks against its own table at import.
pub const validation_codes = [_]Status{
    not_raindrops,
    layout_mismatch,
    truncated,
    corrupt,
    foreign_owner,
    writable_by_others,
};

/// The kernel's MAX_ERRNO: no errno is larger; a larger magnitude is garbage.
pub const errno_max: Status = 4095;

/// The largest errno std.os.linux.E names (177 on x86_64: ENSRCNAMELOOP).
const errno_named_max: Status = max: {
    var max: Status = 0;
    for (@typeInfo(linux.E).@"enum".field_values) |value| max = @max(max, value);
    break :max max;
};

comptime {
    assert(errno_named_max > 0 and errno_named_max < errno_max);
    // Distinct from every errno, and from each other.
    for (validation_codes, 0..) |code, index| {
        assert(-code > errno_named_max);
        for (validation_codes[0..index]) |earlier| assert(earlier != code);
    }
}

/// -errno for `e`, which must be an error (not SUCCESS).
pub fn fromErrno(e: linux.E) Status {
    const code: Status = @backingInt(e);
    assert(code > 0 and code <= errno_max);
    return -code;
}

/// Turns a raw syscall return value into 0 or -errno.
pub fn fromSyscall(rc: usize) Status {
    return switch (linux.errno(rc)) {
        .SUCCESS => ok,
        else => |e| fromErrno(e),
    };
}

pub fn isErrno(status: Status, e: linux.E) bool {
    return status == fromErrno(e);
}

/// The validation code at `index`, or 0 past the end of the table.
pub fn validationCode(index: u32) Status {
    if (index >= validation_codes.len) return ok;
    return validation_codes[index];
}

test "fromSyscall maps errors to negative errno" {
    try std.testing.expectEqual(ok, fromSyscall(0));
    try std.testing.expectEqual(ok, fromSyscall(42));
    const enoent: usize = @bitCast(@as(isize, -2));
    try std.testing.expectEqual(@as(Status, -2), fromSyscall(enoent));
    try std.testing.expect(isErrno(-2, .NOENT));
}

test "fromErrno is -errno, also at comptime" {
    const invalid: Status = comptime fromErrno(.INVAL);
    try std.testing.expectEqual(@as(Status, -22), invalid);
    try std.testing.expectEqual(@as(Status, -9), fromErrno(.BADF));
    try std.testing.expect(!isErrno(-9, .INVAL));
}

test "validationCode: the table in order, then 0" {
    try std.testing.expectEqual(not_raindrops, validationCode(0));
    try std.testing.expectEqual(layout_mismatch, validationCode(1));
    try std.testing.expectEqual(truncated, validationCode(2));
    try std.testing.expectEqual(corrupt, validationCode(3));
    try std.testing.expectEqual(foreign_owner, validationCode(4));
    try std.testing.expectEqual(writable_by_others, validationCode(5));
    try std.testing.expectEqual(ok, validationCode(6));
    try std.testing.expectEqual(ok, validationCode(std.math.maxInt(u32)));
}
