//! The studio page in a real headless Chromium against the real `skyreels serve` with the demo
//! model: signing in, every kind of job, watching progress, playing, extending, refusals shown
//! beside their field, text never run as HTML, phone width and keyboard use, and a server
//! restarted under a running job. Screenshots of every state are kept in
//! `target/tmp/studio-screenshots/`.

mod browser;
#[path = "../common/lora.rs"]
mod lora;
#[path = "../common/server.rs"]
mod server;

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use browser::{free_port, Browser};
use serde_json::{json, Value};
use server::{create_token, Server};

/// The browser and the server's worker share two cores: one test at a time.
static HEAVY: Mutex<()> = Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

const MINUTE: Duration = Duration::from_secs(60);

/// The id of the newest card in `list` (`#queue` or `#gallery`) once there are more than `known`
/// cards in the page.
async fn new_card(b: &Browser, known: usize) -> String {
    let script = "return document.querySelectorAll('.job').length > arguments[0]
        ? [...document.querySelectorAll('.job')].sort((a, c) => c.dataset.created - a.dataset.created)[0].dataset.id
        : null;";
    let id = b.wait_for("a new job card", Duration::from_secs(20), script, vec![json!(known)]).await;
    id.as_str().unwrap().to_string()
}

/// Presses Generate and returns the new job's id.
async fn submit(b: &Browser) -> String {
    let known = cards(b).await;
    b.click("#generate").await;
    new_card(b, known).await
}

fn card(id: &str) -> String {
    format!(".job[data-id='{id}']")
}

async fn cards(b: &Browser) -> usize {
    b.js("return document.querySelectorAll('.job').length;", vec![]).await.as_u64().unwrap() as usize
}

/// Waits until the job's card shows `state`.
async fn wait_state(b: &Browser, id: &str, state: &str) {
    let script =
        "const c = document.querySelector(arguments[0]); return c !== null && c.dataset.state === arguments[1];";
    let what = format!("job {id} to be {state}");
    b.wait_for(&what, MINUTE, script, vec![json!(card(id)), json!(state)]).await;
}

/// The value of the card's progress bar.
async fn bar(b: &Browser, id: &str) -> f64 {
    let script = "const e = document.querySelector(arguments[0] + ' .bar'); return e ? e.value : 0;";
    b.js(script, vec![json!(card(id))]).await.as_f64().unwrap()
}

async fn sign_in(b: &Browser, base: &str, token: &str) {
    b.goto(base).await;
    b.wait_visible("#token").await;
    b.type_into("#token", token).await;
    b.click("#sign-in").await;
    b.wait_visible("#studio").await;
}

fn write_png(path: &Path) {
    let image = image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([(x * 4) as u8, 40, (y * 4) as u8]));
    image.save(path).unwrap();
}

/// WCAG contrast of the text of `css` against the background of its nearest `.panel`, `.job`
/// or the body, computed in the page.
const CONTRAST: &str = "
    const rgb = (s) => s.match(/[\\d.]+/g).slice(0, 3).map(Number);
    const lum = (c) => { const [r, g, b] = c.map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
        return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
    const e = document.querySelector(arguments[0]);
    let bg = e;
    while (bg && getComputedStyle(bg).backgroundColor.replace(/\\s/g, '') === 'rgba(0,0,0,0)') bg = bg.parentElement;
    const [a, c] = [lum(rgb(getComputedStyle(e).color)), lum(rgb(getComputedStyle(bg || document.body).backgroundColor))];
    return (Math.max(a, c) + 0.05) / (Math.min(a, c) + 0.05);";

/// Runs one browser test: alone (see [`HEAVY`]), on a single-threaded runtime.
fn run_alone(test: impl std::future::Future<Output = ()>) {
    let _heavy = heavy();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(test);
}

#[test]
fn the_studio_makes_watches_plays_extends_and_refuses() {
    run_alone(makes_watches_plays_extends_and_refuses());
}

#[test]
fn a_card_follows_its_job_across_a_server_restart() {
    run_alone(follows_a_job_across_a_server_restart());
}

async fn makes_watches_plays_extends_and_refuses() {
    let data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let token = create_token(data.path(), None, "ada", false);
    let demo = skyreels_core::pipelines::generation::demo_model_dir();
    // An adapter this server offers, for the demo model (128 wide, FFN 384).
    std::fs::create_dir_all(data.path().join("loras")).unwrap();
    lora::write_lora_sized(&data.path().join("loras/style.safetensors"), 128, 384);
    let t2v = concat!(env!("CARGO_MANIFEST_DIR"), "/../skyreels-core/tests/fixtures/models/t2v_pipeline");
    let r2v = concat!(env!("CARGO_MANIFEST_DIR"), "/../skyreels-core/tests/fixtures/models/r2v_pipeline");
    let server =
        Server::start(data.path(), &["--endless", "--model", demo.to_str().unwrap(), "--model", t2v, "--model", r2v]);
    let b = Browser::start(1280, 900).await;

    // Signing in: a wrong token is refused beside the field; the right one opens the studio
    // with the model's defaults filled in.
    b.goto(&server.base).await;
    b.wait_visible("#token").await;
    b.type_into("#token", "not-a-token").await;
    b.click("#sign-in").await;
    b.wait_text("#token-error", "not valid").await;
    b.screenshot("01-sign-in-refused").await;
    b.type_into("#token", &token).await;
    b.click("#sign-in").await;
    b.wait_visible("#studio").await;
    assert_eq!(b.value("#height").await, "64");
    assert_eq!(b.value("#frames").await, "81");
    assert_eq!(b.value("#seconds").await, "5.06");
    assert!(!b.js("return document.querySelector('#advanced').open;", vec![]).await.as_bool().unwrap());
    b.screenshot("02-signed-in").await;

    // A text job of four windows.
    let prompt = "a red ball rolls left";
    b.type_into("#prompt", prompt).await;
    b.click("#advanced summary").await;
    b.type_into("#steps", "10").await;
    // The server's adapter at half strength, and the frame cache.
    b.js(
        "document.querySelector('#lora').value = 'style'; document.querySelector('#cache').value = 'frames:0.1';",
        vec![],
    )
    .await;
    b.type_into("#lora_strength", "0.5").await;
    let text_job = submit(&b).await;
    // The progress bar moves and the newest decoded frame appears while it runs.
    let moving = "const e = document.querySelector(arguments[0] + ' .bar'); return e && e.value > 0 ? e.value : null;";
    let first = b.wait_for("the bar to move", MINUTE, moving, vec![json!(card(&text_job))]).await.as_f64().unwrap();
    let script =
        "const e = document.querySelector(arguments[0] + ' .bar'); return e === null || e.value > arguments[1];";
    b.wait_for("the bar to move on", MINUTE, script, vec![json!(card(&text_job)), json!(first)]).await;
    let preview = "const i = document.querySelector(arguments[0] + ' .preview');
        const c = document.querySelector(arguments[0]);
        return (i && !i.hidden && i.complete && i.naturalWidth > 0) || c.dataset.state === 'done';";
    b.wait_for("the preview", MINUTE, preview, vec![json!(card(&text_job))]).await;
    b.screenshot("03-running").await;
    assert_eq!(b.text(&format!("{} .job-title", card(&text_job))).await, prompt);

    // Finished: it moves to the gallery and its video plays in the page.
    wait_state(&b, &text_job, "done").await;
    assert!(b
        .js(
            "return document.querySelector('#gallery').contains(document.querySelector(arguments[0]));",
            vec![json!(card(&text_job))]
        )
        .await
        .as_bool()
        .unwrap());
    let video = format!("{} video", card(&text_job));
    let playing = "const v = document.querySelector(arguments[0]);
        if (v.readyState >= 1 && v.paused && v.currentTime === 0) v.play();
        return v.duration > 0 && v.currentTime > 0 ? v.duration : null;";
    let duration = b.wait_for("the video to play", MINUTE, playing, vec![json!(video)]).await;
    assert!(duration.as_f64().unwrap() > 0.5, "duration {duration}");
    b.screenshot("04-finished").await;

    // Its settings file can be read in the page.
    b.click(&format!("{} .sidecar summary", card(&text_job))).await;
    b.wait_text(&format!("{} .sidecar-text", card(&text_job)), "\"seed\"").await;
    let sidecar = b.text(&format!("{} .sidecar-text", card(&text_job))).await;
    assert!(sidecar.contains("style.safetensors") && sidecar.contains("0.5"), "{sidecar}");
    assert!(sidecar.contains("\"frames:0.1\""), "{sidecar}");

    // A refused setting: the server's sentence appears beside the field.
    b.type_into("#width", "1000").await;
    b.click("#generate").await;
    let refusal = b.wait_text("#width-error", "multiple of 16").await;
    assert!(refusal.contains("1000"), "{refusal}");
    assert_eq!(
        b.js("return document.querySelector('#width').getAttribute('aria-invalid');", vec![]).await,
        json!("true")
    );
    assert_eq!(b.text("#form-error").await, "");
    b.screenshot("05-refused").await;
    b.type_into("#width", "64").await;

    // Image to video with an uploaded PNG.
    let png = files.path().join("first.png");
    write_png(&png);
    b.click("#mode-image").await;
    b.choose_file("#image", &png).await;
    b.type_into("#prompt", "a blue square drifts").await;
    b.type_into("#frames", "33").await;
    b.type_into("#steps", "3").await;
    let image_job = submit(&b).await;
    wait_state(&b, &image_job, "done").await;
    assert!(b.text(&format!("{} .job-meta", card(&image_job))).await.contains("first frame"));
    let stored = b.api(&format!("/v1/jobs/{image_job}")).await;
    assert_eq!(stored["kind"], "image", "{stored}");
    b.screenshot("06-image-to-video").await;

    // Start and end frames: two uploads.
    let last = files.path().join("last.png");
    write_png(&last);
    b.click("#mode-end_image").await;
    b.choose_file("#image", &png).await;
    b.choose_file("#end_image", &last).await;
    // Its prompt is HTML: it is shown as text, and nothing in it runs.
    let html = r#"<img src=x onerror="window.__xss=1"><script>window.__xss=1</script> a square grows"#;
    b.type_into("#prompt", html).await;
    let framed = submit(&b).await;
    assert_eq!(b.text(&format!("{} .job-title", card(&framed))).await, html);
    wait_state(&b, &framed, "done").await;
    assert_eq!(b.text(&format!("{} .job-title", card(&framed))).await, html);
    assert_eq!(b.js("return typeof window.__xss;", vec![]).await, json!("undefined"));
    let injected = "return document.querySelectorAll('img[src=\"x\"], .job script').length;";
    assert_eq!(b.js(injected, vec![]).await, json!(0));
    assert_eq!(b.api(&format!("/v1/jobs/{framed}")).await["kind"], "end_image");
    b.screenshot("06-html-prompt-as-text").await;

    // A story of two shots, one window each: 33 + 16 frames.
    b.click("#mode-story").await;
    assert!(!b.js("return document.querySelector('#prompt').offsetParent !== null;", vec![]).await.as_bool().unwrap());
    b.type_into(".shot:nth-child(1) .shot-prompt", "a red circle moves right").await;
    b.click("#add-shot").await;
    b.type_into(".shot:nth-child(2) .shot-prompt", "a red circle moves left").await;
    let story = submit(&b).await;
    wait_state(&b, &story, "done").await;
    let stored = b.api(&format!("/v1/jobs/{story}")).await;
    assert_eq!((stored["kind"].as_str(), stored["frames"].as_u64()), (Some("story"), Some(49)), "{stored}");
    assert_eq!(stored["settings"]["story"][1]["prompt"], "a red circle moves left");
    assert!(b.text(&format!("{} .job-title", card(&story))).await.ends_with("(+1 more shot)"));
    b.screenshot("06-story").await;
    b.click("#mode-text").await;

    // Extend the finished text video from its card.
    b.click(&format!("{} .extend", card(&text_job))).await;
    b.wait_visible("#extend-source").await;
    assert_eq!(b.text("#extend-source-text").await, format!("Extending: {prompt}"));
    b.type_into("#frames", "33").await;
    let extension = submit(&b).await;
    wait_state(&b, &extension, "done").await;
    let stored = b.api(&format!("/v1/jobs/{extension}")).await;
    assert_eq!(stored["kind"], "extend", "{stored}");
    assert_eq!(stored["frames"], 81 + 33 - 17, "{stored}");
    b.screenshot("07-extended").await;

    // Again with a new seed: same settings, another seed.
    let known = cards(&b).await;
    b.click(&format!("{} .again", card(&image_job))).await;
    let again = new_card(&b, known).await;
    let (old, new) = (b.api(&format!("/v1/jobs/{image_job}")).await, b.api(&format!("/v1/jobs/{again}")).await);
    assert_eq!(old["settings"]["image"], new["settings"]["image"]);
    assert_ne!(old["settings"]["seed"], new["settings"]["seed"]);
    wait_state(&b, &again, "done").await;

    // Delete takes two presses.
    let before = cards(&b).await;
    b.click(&format!("{} .delete", card(&framed))).await;
    assert_eq!(b.text(&format!("{} .delete", card(&framed))).await, "Really delete?");
    // A second press at once counts as a double click, not a confirmation.
    b.click(&format!("{} .delete", card(&framed))).await;
    assert!(b
        .js("return document.querySelector(arguments[0]) !== null;", vec![json!(card(&framed))])
        .await
        .as_bool()
        .unwrap());
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.click(&format!("{} .delete", card(&framed))).await;
    let gone = "return document.querySelector(arguments[0]) === null;";
    b.wait_for("the deleted card to go", Duration::from_secs(10), gone, vec![json!(card(&framed))]).await;
    assert_eq!(cards(&b).await, before - 1);
    assert!(b.api(&format!("/v1/jobs/{framed}")).await["error"].is_string());

    // An endless job runs until it is stopped from the page; what it made stays playable.
    b.click("#mode-text").await;
    b.type_into("#prompt", "a long walk along the beach").await;
    b.click("#endless").await;
    assert!(b.js("return document.querySelector('#frames').disabled;", vec![]).await.as_bool().unwrap());
    b.type_into("#steps", "4").await;
    let endless = submit(&b).await;
    let frames = "const v = document.querySelector(arguments[0] + ' video'); return v && !v.hidden;";
    b.wait_for("the endless video's first window", MINUTE, frames, vec![json!(card(&endless))]).await;
    // The video written so far plays while the job goes on (served with Range requests).
    let growing = "const c = document.querySelector(arguments[0]); const v = c.querySelector('video');
        return c.dataset.state === 'running' && v.readyState >= 1 && v.duration > 0;";
    b.wait_for("the growing video to load", MINUTE, growing, vec![json!(card(&endless))]).await;
    b.wait_text(&format!("{} .progress-text", card(&endless)), "of ∞").await;
    // The README's picture (docs/studio.png): finished videos and a running job.
    b.click("#advanced summary").await;
    b.client.set_window_size(1280, 1200).await.unwrap();
    b.js("window.scrollTo(0, 0);", vec![]).await;
    b.screenshot("studio").await;
    b.client.set_window_size(1280, 900).await.unwrap();
    b.click(&format!("{} .stop", card(&endless))).await;
    wait_state(&b, &endless, "cancelled").await;
    let stored = b.api(&format!("/v1/jobs/{endless}")).await;
    assert!(stored["progress"]["frames"].as_u64().unwrap() >= 33, "{stored}");
    b.click("#endless").await;

    // A one-shot text-to-video model: the modes and settings only diffusion forcing has are
    // disabled, and come back with the DF model.
    let choose =
        "const s = document.querySelector('#model'); s.value = arguments[0]; s.dispatchEvent(new Event('change'));";
    b.click("#mode-story").await;
    b.js(choose, vec![json!("t2v_pipeline")]).await;
    let disabled = "return ['#mode-image', '#mode-story', '#mode-extend', '#endless', '#schedule']
        .every((css) => document.querySelector(css).disabled) && document.querySelector('#mode-text').checked;";
    assert!(b.js(disabled, vec![]).await.as_bool().unwrap());
    // A reference-to-video model has one mode: its references, uploaded with the job.
    b.js(choose, vec![json!("r2v_pipeline")]).await;
    let only_references = "return [...document.querySelectorAll('input[name=mode]')]
        .every((r) => r.disabled === (r.value !== 'references')) && document.querySelector('#mode-references').checked;";
    assert!(b.js(only_references, vec![]).await.as_bool().unwrap());
    b.choose_file("#references", &png).await;
    b.type_into("#prompt", "the square and a friend").await;
    b.js("document.querySelector('#advanced').open = true;", vec![]).await;
    for (field, value) in [("#width", "48"), ("#height", "32"), ("#frames", "5"), ("#steps", "2")] {
        b.type_into(field, value).await;
    }
    let reference_job = submit(&b).await;
    wait_state(&b, &reference_job, "done").await;
    assert!(b.text(&format!("{} .job-meta", card(&reference_job))).await.contains("references"));
    let stored = b.api(&format!("/v1/jobs/{reference_job}")).await;
    assert_eq!(stored["settings"]["references"].as_array().map(Vec::len), Some(1), "{stored}");
    b.js(choose, vec![json!("skyreels-demo")]).await;
    assert!(!b.js("return document.querySelector('#mode-story').disabled;", vec![]).await.as_bool().unwrap());

    // Keyboard and screen readers: every control has a label, nothing forces a focus order,
    // Tab from the prompt goes on through the form, and text keeps 4.5:1 contrast.
    let unlabelled = "return [...document.querySelectorAll('input, select, textarea')]
        .filter((e) => e.type !== 'hidden' && e.labels.length === 0 && !e.getAttribute('aria-label'))
        .map((e) => e.id || e.className);";
    assert_eq!(b.js(unlabelled, vec![]).await, json!([]));
    assert_eq!(
        b.js("return [...document.querySelectorAll('[tabindex]')].filter((e) => e.tabIndex > 0).length;", vec![]).await,
        json!(0)
    );
    b.js("document.querySelector('#prompt').focus();", vec![]).await;
    b.client.active_element().await.unwrap().send_keys("\u{E004}").await.unwrap();
    let focused = b.js("return document.activeElement.id;", vec![]).await;
    assert_eq!(focused, json!("seconds"), "Tab from the prompt should reach the length");
    for css in ["label[for=prompt]", ".job-meta", "#generate", ".badge", "#frames-hint", "summary"] {
        let ratio = b.js(CONTRAST, vec![json!(css)]).await.as_f64().unwrap();
        assert!(ratio >= 4.5, "{css}: contrast {ratio:.2} is below 4.5");
    }

    // A phone-width screen: one column, nothing wider than the screen.
    b.client.set_window_size(390, 844).await.unwrap();
    let fits = "return document.documentElement.scrollWidth <= document.documentElement.clientWidth;";
    b.wait_for("the page to fit a phone", Duration::from_secs(5), fits, vec![]).await;
    b.screenshot("08-phone").await;
    b.js("document.querySelector('#gallery-section').scrollIntoView();", vec![]).await;
    b.screenshot("09-phone-gallery").await;

    // Signing out forgets the session.
    b.client.set_window_size(1280, 900).await.unwrap();
    b.click("#sign-out").await;
    b.wait_visible("#token").await;
    b.goto(&server.base).await;
    b.wait_visible("#token").await;
    b.client.clone().close().await.unwrap();
}

async fn follows_a_job_across_a_server_restart() {
    let data = tempfile::tempdir().unwrap();
    let token = create_token(data.path(), None, "grace", false);
    let address = format!("127.0.0.1:{}", free_port());
    let mut server = Server::start_at(&address, data.path(), &[]);
    let b = Browser::start(1280, 900).await;
    sign_in(&b, &server.base, &token).await;

    // Nine windows: long enough to restart the server in the middle.
    b.type_into("#prompt", "a paper boat on a stream").await;
    b.type_into("#frames", "161").await;
    let job = submit(&b).await;
    let window = "const j = arguments[0]; const t = document.querySelector(j + ' .progress-text');
        const m = t && t.textContent.match(/Window (\\d+) of (\\d+)/); return m && Number(m[1]) >= 3 ? Number(m[1]) : null;";
    let reached = b.wait_for("window 3", MINUTE, window, vec![json!(card(&job))]).await.as_u64().unwrap();
    let before = bar(&b, &job).await;
    assert!(before > 0.0);

    server.kill();
    b.wait_text("#connection", "Reconnecting").await;
    b.screenshot("10-server-gone").await;
    let server = Server::start_at(&address, data.path(), &[]);

    // The page reconnects by itself; the same card picks up where the job was and finishes.
    let connected = "return document.querySelector('#connection').textContent === '';";
    b.wait_for("the page to reconnect", MINUTE, connected, vec![]).await;
    let resumed = "const c = document.querySelector(arguments[0]); const t = c.querySelector('.progress-text').textContent;
        const m = t.match(/Window (\\d+) of/); return c.dataset.state === 'done' || (m !== null && Number(m[1]) >= arguments[1]);";
    b.wait_for("the card to resume", MINUTE, resumed, vec![json!(card(&job)), json!(reached)]).await;
    b.screenshot("11-resumed").await;
    wait_state(&b, &job, "done").await;
    assert_eq!(b.js("return document.querySelectorAll(arguments[0]).length;", vec![json!(card(&job))]).await, json!(1));
    let stored: Value = b.api(&format!("/v1/jobs/{job}")).await;
    assert_eq!(stored["frames"], 161, "{stored}");
    assert_eq!(stored["attempts"], 2, "{stored}");
    assert!(b.text(&format!("{} .job-meta", card(&job))).await.contains("161 frames"));
    drop(server);
    b.client.clone().close().await.unwrap();
}
