//! daxrace's kernel programs. Each program turns one hook into a [`Record`] in
//! the `EVENTS` ring buffer; which program attaches where is decided in
//! userspace by the probe plan, never here.
#![no_std]
// A locked add, which the bpfel target offers only as inline assembly.
#![feature(asm_experimental_arch)]
#![no_main]

mod context;
mod dax;
mod emit;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path; this only satisfies no_std.
    loop {}
}
