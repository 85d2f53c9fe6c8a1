// Shared by every kernel: the flat index of a thread in a 1-D job dispatched as a 2-D
// grid of 64-thread workgroups (one dimension holds at most 65535 workgroups).
fn flat_index(wg: vec3<u32>, groups: vec3<u32>, lid: u32) -> u32 {
    return (wg.y * groups.x + wg.x) * 64u + lid;
}
