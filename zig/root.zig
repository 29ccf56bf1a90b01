//! The C ABI of libraindrops: thin exports over shm.zig and counters.zig.
//! Every function that can fail returns 0 or a negative status (see
//! status.zig); none panics across the boundary.
const std = @import("std");
const shm = @import("shm.zig");
const counters = @import("counters.zig");
const status = @import("status.zig");

const Segment = shm.Segment;
const Status = status.Status;
const invalid: Status = -@as(Status, @backingInt(std.os.linux.E.INVAL));

export fn raindrops_stride() u32 {
    return shm.strideDetected();
}

export fn raindrops_counters_max() u64 {
    return shm.counters_max;
}

export fn raindrops_segment_bytes() u64 {
    return @sizeOf(Segment);
}

export fn raindrops_anonymous_create(size: u64, segment: *Segment) Status {
    return shm.createAnonymous(size, segment);
}

export fn raindrops_named_open(name: [*:0]const u8, size: u64, mode: u32, create: u32, segment: *Segment) Status {
    const name_slice = shm.nameSlice(name) orelse return invalid;
    return shm.openNamed(name_slice, size, mode, create != 0, segment);
}

export fn raindrops_named_unlink(name: [*:0]const u8) Status {
    const name_slice = shm.nameSlice(name) orelse return invalid;
    return shm.unlinkNamed(name_slice);
}

/// Grows the backing file; maps a new view into `segment`. The caller keeps
/// the old view mapped until close, since other threads may still use it.
export fn raindrops_reserve(segment: *Segment, capacity: u64) Status {
    if (segment.base == null) return invalid;
    return shm.reserve(segment, capacity);
}

export fn raindrops_refresh(segment: *Segment) Status {
    if (segment.base == null) return invalid;
    return shm.refresh(segment);
}

export fn raindrops_size(segment: *const Segment) u64 {
    if (segment.base == null) return 0;
    return shm.sizeOf(segment);
}

export fn raindrops_set_size(segment: *Segment, size: u64) Status {
    if (segment.base == null) return invalid;
    return shm.setSize(segment, size);
}

export fn raindrops_snapshot(segment: *const Segment, values: [*]u64, count: u64) Status {
    if (segment.base == null) return invalid;
    return shm.snapshot(segment, values, count);
}

export fn raindrops_restore(segment: *Segment, values: [*]const u64, count: u64) Status {
    if (segment.base == null) return invalid;
    return shm.restore(segment, values, count);
}

export fn raindrops_unmap(base: ?[*]u8, bytes: u64) Status {
    if (base == null or bytes == 0) return invalid;
    return shm.unmap(base.?, bytes);
}

export fn raindrops_close(segment: *Segment) Status {
    if (segment.base == null) return invalid;
    return shm.close(segment);
}

// The hot path: one counter pointer, prepared once by the caller from a
// segment view that stays mapped until the segment is closed.

export fn raindrops_incr_one(counter: *u64) u64 {
    return counters.add(counter, 1);
}

export fn raindrops_decr_one(counter: *u64) u64 {
    return counters.sub(counter, 1);
}

export fn raindrops_incr(counter: *u64, delta: u64) u64 {
    return counters.add(counter, delta);
}

export fn raindrops_decr(counter: *u64, delta: u64) u64 {
    return counters.sub(counter, delta);
}

export fn raindrops_load(counter: *const u64) u64 {
    return counters.load(counter);
}

export fn raindrops_store(counter: *u64, value: u64) void {
    counters.store(counter, value);
}

/// Floors for the benchmarks: the cost of a ctypes call that does nothing.
export fn raindrops_noop() void {}

export fn raindrops_noop_pointer(counter: *const u64) u64 {
    return @intFromPtr(counter);
}

test {
    _ = status;
    _ = counters;
    _ = shm;
}
