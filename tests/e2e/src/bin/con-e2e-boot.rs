//! Boots one end-to-end test container and keeps it until stdin closes (or
//! Ctrl-C), printing how to get a shell in it: for poking at what a scenario
//! sees. The orphan-sweeping test also uses it as an owner it can SIGKILL.

use std::io::Read;

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let hint = std::env::args()
        .nth(1)
        .unwrap_or_else(|| String::from("manual"));
    let started = std::time::Instant::now();
    let image = con_e2e::Image::ensure().context("preparing the image")?;
    match image.built_in() {
        Some(took) => println!("image: {} (built in {took:.1?})", image.root().display()),
        None => println!(
            "image: {} (cached, checked in {:.1?})",
            image.root().display(),
            started.elapsed()
        ),
    }
    let container = con_e2e::Container::boot(&image, &hint).context("booting")?;
    println!("machine: {}", container.name());
    println!("state: {:?}", container.boot_state());
    println!("boot_time: {:.2?}", container.boot_time());
    println!("state_dir: {}", container.state_dir().display());
    println!("pid1: {}", container.pid1());
    println!(
        "enter it with: nsenter -t {} -m -u -i -n -p /bin/bash",
        container.pid1()
    );
    println!("close stdin (Ctrl-D) to stop it");
    // Wait for EOF; a read error means the same thing here.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    let stopping = std::time::Instant::now();
    drop(container);
    println!("stopped and removed in {:.2?}", stopping.elapsed());
    Ok(())
}
