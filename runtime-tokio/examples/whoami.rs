//! The README's muxrpc plugin: registers as "whoami" and serves muxrpc's
//! `manifest` and `whoami` (the caller's SSB id, as the broker
//! authenticated it) on every channel. Run: `cargo run --example whoami --
//! SECRET BROKER`.

use plugboard_tokio::muxrpc::{Body, Config};
use plugboard_tokio::Plugin;
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (secret, broker) = (args.next().ok_or("SECRET?")?, args.next().ok_or("BROKER?")?);
    let keypair = plugboard_core::keys::secret_file::read(secret.as_ref())?;
    let plugin = Plugin::builder(keypair)
        .name("whoami")
        .connect(&broker)
        .await?;
    while let Some(incoming) = plugin.incoming().await {
        let caller = incoming.from_key.to_string();
        let manifest = json!({"manifest": "sync", "whoami": "sync"});
        let (_rpc, mut calls) = incoming.accept().await?.muxrpc(Config::new(manifest));
        tokio::spawn(async move {
            // The session answers `manifest` itself: only `whoami` comes here.
            while let Some(call) = calls.next().await {
                let _ = call.respond(Ok(Body::json(&json!({ "id": caller }))));
            }
        });
    }
    Ok(())
}
