#![no_std]
#![no_main]
use cortex_m_rt::entry;
use tinybayes_firmware::platform;
#[entry]
fn main() -> ! {
    platform::exit(true)
}
