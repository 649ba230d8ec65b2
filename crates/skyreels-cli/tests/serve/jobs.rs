//! Every kind of job over HTTP: created, followed, downloaded, decoded; cancelled; deleted.

use std::time::Duration;

use serde_json::json;

use super::*;

#[test]
fn every_kind_of_job_runs_and_its_video_downloads() {
    let _heavy = heavy();
    let dir = temp();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let token = create_token(&data, None, "alice", false);
    let server = Server::start(&data, &[]);
    let client = server.client(&token);

    // Text: followed over SSE from queued to done.
    let text = client.create(&quick("a red ball bounces"));
    let (events, last) = follow(&client, &text);
    assert_eq!(events.last().map(String::as_str), Some("done"), "{events:?}");
    assert!(events.iter().any(|e| e == "running"), "{events:?}");
    assert_eq!(last["kind"], "text");
    let (frames, w, h, _) = download_and_decode(&client, &text, dir.path());
    assert_eq!((frames, w, h), (33, 64, 64));
    // A preview frame exists once a window is done, and ranges of the video can be fetched.
    let preview = client.get(&format!("/v1/jobs/{text}/preview"));
    assert_eq!((preview.status, preview.content_type.as_str()), (200, "image/png"));
    let range = client.get_with(&format!("/v1/jobs/{text}/video"), ("Range", "bytes=4-11"));
    assert_eq!((range.status, range.body.as_slice()), (206, &b"ftypisom"[..]));

    // Uploads: the preview as an image, the text job's video to extend.
    let image = client.post("/v1/uploads", "image/png", &preview.body).json()["id"].as_str().unwrap().to_string();
    let video_bytes = client.get(&format!("/v1/jobs/{text}/video")).body;
    let video = client.post("/v1/uploads", "video/mp4", &video_bytes).json()["id"].as_str().unwrap().to_string();

    let cases = [
        ("image", json!({"prompt": "the ball", "image": image, "frames": 33, "steps": 3}), 33),
        ("end_image", json!({"prompt": "the ball", "end_image": image, "frames": 33, "steps": 3}), 33),
        // The 33 frames extended are kept; 49 counts the 17 shared with the new part.
        ("extend", json!({"prompt": "it rolls on", "extend": video, "frames": 49, "steps": 3}), 33 + 49 - 17),
        (
            "story",
            json!({"story": [{"prompt": "a ball"}, {"prompt": "a cube", "windows": 1}], "steps": 3, "format": "gif"}),
            49,
        ),
    ];
    for (kind, settings, expected_frames) in cases {
        let id = client.create(&settings);
        let (events, last) = follow(&client, &id);
        assert_eq!(events.last().map(String::as_str), Some("done"), "{kind}: {last}");
        assert_eq!(last["kind"], kind);
        assert_eq!(last["frames"], expected_frames, "{kind}");
        let reply = client.get(&format!("/v1/jobs/{id}/video"));
        let path = dir.path().join(format!("{kind}.{}", if kind == "story" { "gif" } else { "mp4" }));
        std::fs::write(&path, &reply.body).unwrap();
        let reader = skyreels_core::media::open_video(&path).unwrap();
        assert_eq!((reader.width(), reader.height()), (64, 64), "{kind}");
        assert_eq!(reader.count(), expected_frames, "{kind}");
    }
    let list = client.get("/v1/jobs").json();
    assert_eq!(list["jobs"].as_array().unwrap().len(), 5);
    let metrics = client.get("/v1/metrics").text();
    assert!(metrics.contains("skyreels_jobs{state=\"done\"} 5"), "{metrics}");
    assert!(metrics.contains("skyreels_queue_length 0"), "{metrics}");
}

/// A reference-to-video model takes its references as uploads; a model without reference input
/// refuses them beside the field.
#[test]
fn reference_jobs_take_uploaded_references() {
    let _heavy = heavy();
    let dir = temp();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let token = create_token(&data, None, "alice", false);
    let r2v = format!("{}/../skyreels-core/tests/fixtures/models/r2v_pipeline", env!("CARGO_MANIFEST_DIR"));
    let demo = skyreels_core::pipelines::generation::demo_model_dir();
    let server = Server::start(&data, &["--model", &r2v, "--model", demo.to_str().unwrap()]);
    let client = server.client(&token);
    let mut png = Vec::new();
    let pixels: Vec<u8> = (0..40 * 24 * 3).map(|i| (i * 7 % 256) as u8).collect();
    image::RgbImage::from_raw(40, 24, pixels)
        .unwrap()
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let reference = client.post("/v1/uploads", "image/png", &png).json()["id"].as_str().unwrap().to_string();
    let config = client.get("/v1/config").json();
    assert_eq!(config["models"][0]["pipeline"], "reference_to_video", "{config}");
    assert_eq!(config["models"][0]["defaults"]["steps"], 8, "{config}");
    let job = json!({"prompt": "a kite", "references": [reference], "frames": 5, "steps": 2,
        "height": 32, "width": 48, "model": "r2v_pipeline"});
    let id = client.create(&job);
    let (events, last) = follow(&client, &id);
    assert_eq!(events.last().map(String::as_str), Some("done"), "{last}");
    assert_eq!(last["kind"], "references");
    let (frames, w, h, _) = download_and_decode(&client, &id, dir.path());
    assert_eq!((frames, w, h), (5, 48, 32));
    // The demo model has no reference input.
    let demo_name = config["models"][1]["name"].as_str().unwrap();
    let refused = client.post_json("/v1/jobs", &json!({"prompt": "x", "references": [reference], "model": demo_name}));
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert_eq!(refused.json()["field"], "references", "{}", refused.text());
}

/// Jobs name the adapters the server offers in `<data>/loras/`; nothing else.
#[test]
fn jobs_take_the_loras_the_server_offers() {
    let _heavy = heavy();
    let dir = temp();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("loras")).unwrap();
    super::lora::write_lora(&data.join("loras/style.safetensors"), 32);
    let token = create_token(&data, None, "alice", false);
    let df = format!("{}/../skyreels-core/tests/fixtures/models/df_pipeline", env!("CARGO_MANIFEST_DIR"));
    let server = Server::start(&data, &["--model", &df]);
    let client = server.client(&token);
    // The page lists them.
    assert_eq!(client.get("/v1/config").json()["loras"], json!(["style"]));
    let job = |loras: serde_json::Value| json!({"prompt": "a kite", "frames": 5, "steps": 2, "height": 32, "width": 48, "seed": 3, "loras": loras});
    let id = client.create(&job(json!(["style:0.8"])));
    let (events, last) = follow(&client, &id);
    assert_eq!(events.last().map(String::as_str), Some("done"), "{last}");
    for (loras, mentions) in [
        (json!(["nope"]), "no adapter `nope`"),
        (json!(["../loras/style"]), "no adapter"),
        (json!(["style:x"]), "not a number"),
    ] {
        let refused = client.post_json("/v1/jobs", &job(loras));
        assert_eq!(refused.status, 400, "{}", refused.text());
        assert_eq!(refused.json()["field"], "loras", "{}", refused.text());
        assert!(refused.text().contains(mentions), "{}", refused.text());
    }
}

#[test]
fn running_jobs_cancel_and_deleted_jobs_leave_nothing() {
    let _heavy = heavy();
    let dir = temp();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let token = create_token(&data, None, "bob", false);
    let server = Server::start(&data, &[]);
    let client = server.client(&token);

    let id = client.create(&json!({"prompt": "a long one", "frames": 161, "steps": 20}));
    wait_for(&client, &id, Duration::from_secs(120), |j| {
        j["state"] == "running" && j["progress"]["steps_done"].as_u64() >= Some(1)
    });
    let reply = client.post(&format!("/v1/jobs/{id}/cancel"), "application/json", b"");
    assert_eq!(reply.status, 202, "{}", reply.text());
    let (events, last) = follow(&client, &id);
    assert_eq!(events.last().map(String::as_str), Some("cancelled"), "{last}");
    assert!(last["finished_ms"].is_i64());

    // A queued job behind a running one is cancelled at once.
    let first = client.create(&json!({"prompt": "busy", "frames": 161, "steps": 20}));
    let queued = client.create(&quick("waiting"));
    let reply = client.post(&format!("/v1/jobs/{queued}/cancel"), "application/json", b"");
    assert_eq!(reply.json()["state"], "cancelled");

    // Deleting removes the job and its folder, running or not.
    wait_for(&client, &first, Duration::from_secs(120), |j| j["state"] == "running");
    for id in [&id, &first, &queued] {
        assert_eq!(client.delete(&format!("/v1/jobs/{id}")).status, 204);
        assert_eq!(client.get(&format!("/v1/jobs/{id}")).status, 404);
    }
    let start = Instant::now();
    while [&id, &first, &queued].iter().any(|id| job_dir(&data, id).exists()) {
        assert!(start.elapsed() < Duration::from_secs(60), "job folders were not removed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(client.get("/v1/jobs").json()["jobs"].as_array().unwrap().len(), 0);
}

#[test]
fn bad_server_settings_are_refused_with_one_sentence() {
    let dir = temp();
    let data = dir.path().to_str().unwrap();
    let cases: [&[&str]; 4] = [
        &["serve", "--data", data, "--device", "cuda:7", "--listen", "127.0.0.1:0"],
        &["serve", "--data", data, "--model", "/nonexistent", "--listen", "127.0.0.1:0"],
        &["serve", "--data", data, "--lease-seconds", "0"],
        &["serve", "token", "delete", "nobody", "--data", data],
    ];
    for args in cases {
        let out = skyreels().args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.starts_with("error: ") && stderr.trim().lines().count() == 1, "{args:?}: {stderr}");
    }
}
