//! Status codes crossing the C ABI: 0 on success, -errno for a failed system
//! call, or one of the negative codes below for a segment that fails validation.
const std = @import("std");
const linux = std.os.linux;

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

/// Turns a raw syscall return value into 0 or -errno.
pub fn fromSyscall(rc: usize) Status {
    return switch (linux.errno(rc)) {
        .SUCCESS => ok,
        else => |e| -@as(Status, @intCast(@backingInt(e))),
    };
}

pub fn isErrno(status: Status, e: linux.E) bool {
    return status == -@as(Status, @intCast(@backingInt(e)));
}

test "fromSyscall maps errors to negative errno" {
    try std.testing.expectEqual(ok, fromSyscall(0));
    try std.testing.expectEqual(ok, fromSyscall(42));
    const enoent: usize = @bitCast(@as(isize, -2));
    try std.testing.expectEqual(@as(Status, -2), fromSyscall(enoent));
    try std.testing.expect(isErrno(-2, .NOENT));
}
