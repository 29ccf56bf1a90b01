//! getsockopt(TCP_INFO): the kernel's struct tcp_info, copied as bytes.
//! Python decodes the fields (raindrops/tcp_info.py) up to the length the
//! kernel wrote, so a newer kernel with a longer struct needs no change here.
const std = @import("std");
const linux = std.os.linux;
const assert = std.debug.assert;
const status = @import("status.zig");

const Status = status.Status;

/// Kernel 6.18's struct tcp_info is 280 bytes; leave room for growth.
pub const buffer_bytes: u32 = 512;

/// Reads TCP_INFO of `fd` into `buffer`; sets `length` to the bytes written.
pub fn read(fd: i32, buffer: []u8, length: *u32) Status {
    length.* = 0;
    if (fd < 0) return status.fromErrno(.BADF);
    if (buffer.len == 0) return status.fromErrno(.INVAL);
    var written: linux.socklen_t = @intCast(@min(buffer.len, std.math.maxInt(u32)));
    const rc = linux.getsockopt(fd, linux.IPPROTO.TCP, linux.TCP.INFO, buffer.ptr, &written);
    const got = status.fromSyscall(rc);
    if (got != status.ok) return got;
    if (written > buffer.len) return status.fromErrno(.MSGSIZE);
    length.* = written;
    return status.ok;
}

test "read: a bad fd is -EBADF, a non-socket is -ENOTSOCK" {
    var buffer: [buffer_bytes]u8 = undefined;
    var length: u32 = 1;
    try std.testing.expectEqual(@as(Status, -9), read(-1, &buffer, &length));
    try std.testing.expectEqual(@as(u32, 0), length);
    const pipe_fds = blk: {
        var fds: [2]i32 = undefined;
        assert(status.fromSyscall(linux.pipe(&fds)) == status.ok);
        break :blk fds;
    };
    defer _ = linux.close(pipe_fds[0]);
    defer _ = linux.close(pipe_fds[1]);
    try std.testing.expectEqual(status.fromErrno(.NOTSOCK), read(pipe_fds[0], &buffer, &length));
}
