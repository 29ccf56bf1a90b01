//! Atomic counter operations. Every function takes a pointer to one counter
//! slot that the caller derived from a mapped segment; wrapping is modulo 2**64.
const std = @import("std");
const builtin = @import("builtin");
const assert = std.debug.assert;

pub fn add(counter: *u64, delta: u64) u64 {
    assert(@intFromPtr(counter) % @alignOf(u64) == 0);
    return @atomicRmw(u64, counter, .Add, delta, .seq_cst) +% delta;
}

pub fn sub(counter: *u64, delta: u64) u64 {
    assert(@intFromPtr(counter) % @alignOf(u64) == 0);
    return @atomicRmw(u64, counter, .Sub, delta, .seq_cst) -% delta;
}

/// Whether a plain aligned 8-byte load, such as CPython's read of a 'Q' memoryview item, can
/// stand in for `load`. On x86_64 an aligned quadword access is atomic (Intel SDM vol. 3A
/// 9.1.1, AMD APM vol. 2 7.3.2) and loads are not reordered with other loads (x86-TSO), so
/// a sequentially consistent load compiles to that very MOV: the store side carries the
/// fence. On aarch64 an aligned LDR is single-copy atomic too, but it may be reordered with
/// other loads where a sequentially consistent one is LDAR: readers that rely on the order
/// of their loads (a sequence lock) keep `load` there, as on every other architecture.
pub const plain_loads_ordered: bool = builtin.cpu.arch == .x86_64;

pub fn load(counter: *const u64) u64 {
    return @atomicLoad(u64, counter, .seq_cst);
}

pub fn store(counter: *u64, value: u64) void {
    @atomicStore(u64, counter, value, .seq_cst);
}

test "add and sub wrap modulo 2**64 and return the new value" {
    var slot: u64 = 0;
    try std.testing.expectEqual(@as(u64, 5), add(&slot, 5));
    try std.testing.expectEqual(std.math.maxInt(u64), sub(&slot, 6));
    try std.testing.expectEqual(@as(u64, 0), add(&slot, 1));
    store(&slot, std.math.maxInt(u64));
    try std.testing.expectEqual(@as(u64, 0), add(&slot, 1));
    try std.testing.expectEqual(@as(u64, 0), load(&slot));
}

// ---------------------------------------------------------------------------
// Argument-free updates. A ctypes call without arguments costs about half of
// one that converts a pointer argument, so each of `slots_max` slots has its
// own increment and decrement function, which update the counter bound to that
// slot. The bindings live in this process's memory, never in a shared segment:
// the caller binds a pointer it computed from a mapping it made, and fork
// copies the bindings together with the mappings they point into.

pub const slots_max: u32 = 512;

/// What a free slot's functions update: a call through a released slot
/// changes no counter and never faults.
var spare: u64 = 0;
/// Each slot's counter address, 0 while free: zero-initialized memory needs
/// no relocation at load time, where a table of pointers needs one per slot.
var bound: [slots_max]usize = @splat(0);
/// Each slot's state; claiming and releasing are compare-and-swaps, so
/// threads need no lock to share the table, and a slot released twice at once
/// is unbound once.
var claims: [slots_max]u32 = @splat(claim_free);
const claim_free: u32 = 0;
const claim_bound: u32 = 1;
const claim_releasing: u32 = 2;

pub const Step = *const fn () callconv(.c) u64;

fn slotCounter(slot: u32) *u64 {
    const address = @atomicLoad(usize, &bound[slot], .acquire);
    return if (address == 0) &spare else @ptrFromInt(address);
}

fn SlotSteps(comptime slot: u32) type {
    return struct {
        fn incr() callconv(.c) u64 {
            return add(slotCounter(slot), 1);
        }

        fn decr() callconv(.c) u64 {
            return sub(slotCounter(slot), 1);
        }
    };
}

/// The address of slot `slot`'s increment, or its decrement: a switch, where a table of
/// function pointers would need a relocation per entry at load time.
pub fn slotStep(slot: u32, decrement: bool) ?Step {
    @setEvalBranchQuota(slots_max * 16);
    return switch (slot) {
        inline 0...slots_max - 1 => |known| {
            const steps = SlotSteps(known);
            return if (decrement) &steps.decr else &steps.incr;
        },
        else => null,
    };
}

/// Binds `counter` to a free slot and returns the slot, or null when all are claimed.
pub fn slotClaim(counter: *u64) ?u32 {
    assert(@intFromPtr(counter) % @alignOf(u64) == 0);
    for (&claims, 0..) |*claim, slot| {
        if (@atomicLoad(u32, claim, .monotonic) != claim_free) continue;
        if (@cmpxchgStrong(u32, claim, claim_free, claim_bound, .acquire, .monotonic) != null) continue;
        assert(bound[slot] == 0);
        @atomicStore(usize, &bound[slot], @intFromPtr(counter), .release);
        return @intCast(slot);
    }
    return null;
}

/// Unbinds a claimed slot (its functions update the spare word again) and frees it.
pub fn slotRelease(slot: u32) bool {
    if (slot >= slots_max) return false;
    const claim = &claims[slot];
    if (@cmpxchgStrong(u32, claim, claim_bound, claim_releasing, .acquire, .monotonic) != null) {
        return false;
    }
    @atomicStore(usize, &bound[slot], 0, .release);
    @atomicStore(u32, claim, claim_free, .release);
    return true;
}

test "a claimed slot's functions update its counter; a released one updates none" {
    var counter: u64 = 41;
    const slot = slotClaim(&counter) orelse return error.NoSlot;
    try std.testing.expectEqual(@as(u64, 42), slotStep(slot, false).?());
    try std.testing.expectEqual(@as(u64, 41), slotStep(slot, true).?());
    try std.testing.expect(slotRelease(slot));
    try std.testing.expect(!slotRelease(slot));
    try std.testing.expect(!slotRelease(slots_max));
    _ = slotStep(slot, false).?();
    try std.testing.expectEqual(@as(u64, 41), counter);
}

test "slots run out, then a released one is claimed again" {
    var counters_test: [2]u64 = .{ 0, 0 };
    var taken: [slots_max]u32 = undefined;
    var count: u32 = 0;
    while (slotClaim(&counters_test[0])) |slot| : (count += 1) {
        assert(count < slots_max);
        taken[count] = slot;
    }
    try std.testing.expectEqual(slots_max, count);
    try std.testing.expect(slotRelease(taken[7]));
    try std.testing.expectEqual(@as(?u32, taken[7]), slotClaim(&counters_test[1]));
    try std.testing.expectEqual(@as(u64, 1), slotStep(taken[7], false).?());
    for (taken[0..count]) |slot| try std.testing.expect(slotRelease(slot));
    try std.testing.expectEqual(@as(u64, 0), counters_test[0]);
}
