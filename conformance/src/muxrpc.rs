//! Two plugins speak muxrpc on a channel (protocol `muxrpc`), each calling
//! the other: async calls, an error, a source, a sink, a duplex stream, and
//! a goodbye, with `plugboard_runtime::muxrpc` over each API's channel.

use plugboard_tokio::muxrpc::{self, Body, CallError, Calls, Config, Error, Rpc, RpcError};
use serde_json::{json, Value};

use crate::api::{Api, Connect};
use crate::broker::{start_for, Broker};
use crate::scenarios::{connect, run};

fn served() -> Value {
    json!({
        "manifest": "sync",
        "whoami": "async",
        "fail": "async",
        "count": "source",
        "collect": "sink",
        "collected": "async",
        "echo": "duplex"
    })
}

/// The server plugin's methods. `caller` is the opener's key, as the
/// broker authenticated it.
async fn serve(mut calls: Calls, caller: String) {
    let mut collected = Vec::new();
    while let Some(call) = calls.next().await {
        let name = call.name.join(".");
        let n = call.args[0].as_u64().unwrap_or(0);
        match name.as_str() {
            "whoami" => call.respond(Ok(Body::text(caller.clone()))).unwrap(),
            "fail" => call.respond(Err(RpcError::new("as asked"))).unwrap(),
            "collected" => call.respond(Ok(Body::json(&json!(collected)))).unwrap(),
            "count" => {
                let mut stream = call.into_stream().unwrap();
                for i in 0..n {
                    stream.send(Body::json(&json!(i))).await.unwrap();
                }
                stream.end(Ok(())).unwrap();
            }
            "collect" => {
                let mut stream = call.into_stream().unwrap();
                while let Some(item) = stream.recv().await {
                    collected.push(item.unwrap().as_str().unwrap().to_owned());
                }
            }
            "echo" => {
                let mut stream = call.into_stream().unwrap();
                while let Some(item) = stream.recv().await {
                    stream.send(item.unwrap()).await.unwrap();
                }
            }
            other => panic!("the manifest does not list {other}"),
        }
    }
}

/// The caller serves one method too: the server calls it back.
async fn serve_hello(mut calls: Calls) {
    while let Some(call) = calls.next().await {
        assert_eq!(call.name, ["hello"]);
        let greeting = format!("hello, {}", call.args[0].as_str().unwrap());
        call.respond(Ok(Body::text(greeting))).unwrap();
    }
}

async fn texts(mut stream: muxrpc::Stream) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(item) = stream.recv().await {
        out.push(item.unwrap().to_json().unwrap().to_string());
    }
    out
}

async fn exercise(rpc: &Rpc, me: String) {
    let manifest = rpc.call(&["manifest"], json!([])).await.unwrap();
    assert_eq!(manifest.to_json().unwrap(), served());
    let who = rpc.call(&["whoami"], json!([])).await.unwrap();
    assert_eq!(who.as_str().unwrap(), me);
    match rpc.call(&["fail"], json!([])).await {
        Err(Error::Call(CallError::Remote(error))) => assert_eq!(error.message, "as asked"),
        other => panic!("expected the error, got {other:?}"),
    }
    match rpc.call(&["unlisted"], json!([])).await {
        Err(Error::Call(CallError::Remote(error))) => {
            assert_eq!(error.message, "no async:unlisted")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let counted = texts(rpc.source(&["count"], json!([5])).unwrap()).await;
    assert_eq!(counted, ["0", "1", "2", "3", "4"]);
    let mut sink = rpc.sink(&["collect"], json!([])).unwrap();
    for text in ["a", "b", "c"] {
        sink.send(Body::text(text)).await.unwrap();
    }
    sink.end(Ok(())).unwrap();
    assert_eq!(sink.recv().await, None, "the sink's end comes back");
    let collected = rpc.call(&["collected"], json!([])).await.unwrap();
    assert_eq!(collected.to_json().unwrap(), json!(["a", "b", "c"]));
    let mut echo = rpc.duplex(&["echo"], json!([])).unwrap();
    for i in 0..100 {
        echo.send(Body::binary(vec![i; 1000])).await.unwrap();
    }
    echo.end(Ok(())).unwrap();
    let mut back = 0;
    while let Some(item) = echo.recv().await {
        assert_eq!(item.unwrap().bytes, vec![back; 1000]);
        back += 1;
    }
    assert_eq!(back, 100);
}

/// A muxrpc session between two plugins, both ways, then a goodbye.
pub fn muxrpc_between_plugins<B: Broker, A: Api>() {
    let broker = start_for::<B, A>("muxrpc", |_| {});
    let addr = broker.unix.clone();
    run::<A, _>(async move {
        let server = connect::<A>(Connect::new(&addr, 1).name("rpc")).await;
        let client = connect::<A>(Connect::new(&addr, 2)).await;
        let accepting = A::spawn(async move {
            let incoming = A::incoming(&server).await.expect("an incoming channel");
            assert_eq!(A::protocol(&incoming), "muxrpc");
            let caller = A::from_key(&incoming).to_string();
            let channel = A::accept(incoming).await.expect("accepted");
            (server, channel, caller)
        });
        let opened = A::open(&client, "rpc", "muxrpc", bytes::Bytes::new(), false)
            .await
            .expect("opened");
        let (_server, accepted, caller) = accepting.await;
        let me = crate::keys(2).public().to_string();
        assert_eq!(caller, me);

        let (s_rpc, s_calls, s_driver) = muxrpc::connect(accepted, Config::new(served()));
        let s_driver = A::spawn(s_driver);
        let serving = A::spawn(serve(s_calls, caller));
        let hello = json!({"hello": "async"});
        let (c_rpc, c_calls, c_driver) = muxrpc::connect(opened, Config::new(hello));
        let c_driver = A::spawn(c_driver);
        let greeting = A::spawn(serve_hello(c_calls));

        // The server calls the client while the client calls the server.
        let back = A::spawn(async move {
            let answer = s_rpc.call(&["hello"], json!(["server"])).await;
            answer.unwrap().as_str().unwrap().to_owned()
        });
        exercise(&c_rpc, me).await;
        assert_eq!(back.await, "hello, server");
        c_rpc.close().await.expect("a clean goodbye");
        assert_eq!(c_driver.await, Ok(()));
        assert_eq!(s_driver.await, Ok(()));
        serving.await;
        greeting.await;
    });
}
