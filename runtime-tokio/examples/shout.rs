//! The README's plugin: registers as "shout" and answers every channel with
//! what it read, upper-cased. Run: `cargo run --example shout -- SECRET BROKER`
//! (e.g. `~/.plugboard/secret unix:$XDG_RUNTIME_DIR/plugboard.sock`), then
//! `echo hello | plugboard connect shout`.

use plugboard_tokio::Plugin;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (secret, broker) = (args.next().ok_or("SECRET?")?, args.next().ok_or("BROKER?")?);
    let keypair = plugboard_core::keys::secret_file::read(secret.as_ref())?;
    let plugin = Plugin::builder(keypair)
        .name("shout")
        .connect(&broker)
        .await?;
    while let Some(incoming) = plugin.incoming().await {
        let mut channel = incoming.accept().await?; // relayed or direct, the same type
        let mut text = String::new();
        channel.read_to_string(&mut text).await?;
        channel.write_all(text.to_uppercase().as_bytes()).await?;
        channel.shutdown().await?;
    }
    Ok(())
}
