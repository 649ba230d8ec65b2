//! Nothing is lost when a process dies: a server or a worker killed with SIGKILL mid-job, and
//! the job finishes elsewhere (or after a restart) with the same bytes as an uninterrupted run.

use std::time::Duration;

use super::*;

const LONG: Duration = Duration::from_secs(300);

/// Waits until the job's first window is committed while it is still running.
fn wait_mid_job(client: &Client, id: &str) -> Value {
    let job = wait_for(client, id, LONG, |j| j["state"] == "done" || frames_done(j) > 0);
    assert_eq!(job["state"], "running", "the job finished before it could be interrupted: {job}");
    job
}

#[test]
fn a_server_killed_mid_job_resumes_it_after_restart_with_identical_bytes() {
    let _heavy = heavy();
    let dir = temp();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let token = create_token(&data, None, "carol", false);
    let settings = four_windows();
    let reference = reference_video(&settings, dir.path());

    let mut server = Server::start(&data, &[]);
    let id = server.client(&token).create(&settings);
    let job = wait_mid_job(&server.client(&token), &id);
    // Mid-job, the video already plays up to its last committed window.
    let (frames, _, _, _) = download_and_decode(&server.client(&token), &id, dir.path());
    assert!(frames as u64 >= frames_done(&job) && frames < 81, "{frames} frames mid-job");
    server.kill();
    assert!(job_dir(&data, &id).join("video.mp4.resume").is_file(), "no resume state was left");

    let server = Server::start(&data, &[]);
    let client = server.client(&token);
    let (events, last) = follow(&client, &id);
    assert_eq!(events.last().map(String::as_str), Some("done"), "{last}");
    assert_eq!(last["attempts"], 2, "the job was not resumed: {last}");
    let (frames, _, _, bytes) = download_and_decode(&client, &id, dir.path());
    assert_eq!(frames, 81);
    assert!(bytes == reference, "the resumed video differs from an uninterrupted run");
}

/// Two workers on one queue: the one running a job is killed, the other resumes it; then the
/// queue's jobs are each claimed exactly once by the workers running side by side.
fn worker_killed_mid_job(data: &Path, database: Option<&str>, dir: &Path) {
    let token = create_token(data, database, "dave", false);
    let settings = four_windows();
    let reference = reference_video(&settings, dir);
    let mut args = vec!["--no-worker"];
    if let Some(url) = database {
        args.extend(["--database", url]);
    }
    let server = Server::start(data, &args);
    let client = server.client(&token);
    let mut workers = [Worker::start(data, database), Worker::start(data, database)];

    let id = client.create(&settings);
    wait_mid_job(&client, &id);
    let store = skyreels_serve::store::Store::open(&skyreels_serve::database_url(data, database)).unwrap();
    let holder = store.job(&id).unwrap().unwrap().worker.unwrap();
    let index = workers.iter().position(|w| w.id == holder).expect("the job is held by one of our workers");
    workers[index].kill();

    let (events, last) = follow(&client, &id);
    assert_eq!(events.last().map(String::as_str), Some("done"), "{last}");
    assert_eq!(last["attempts"], 2, "{last}");
    assert_ne!(store.job(&id).unwrap().unwrap().worker.as_deref(), Some(holder.as_str()));
    let (frames, _, _, bytes) = download_and_decode(&client, &id, dir);
    assert_eq!(frames, 81);
    assert!(bytes == reference, "the video finished by another worker differs from an uninterrupted run");

    // Side by side, two workers never take the same job.
    workers[index] = Worker::start(data, database);
    let ids: Vec<String> = (0..4).map(|i| client.create(&quick(&format!("ball {i}")))).collect();
    for id in &ids {
        let (_, last) = follow(&client, id);
        assert_eq!((last["state"].as_str(), last["attempts"].as_i64()), (Some("done"), Some(1)), "{last}");
    }
}

#[test]
fn a_worker_killed_mid_job_is_replaced_sqlite() {
    let _heavy = heavy();
    let dir = temp();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    worker_killed_mid_job(&data, None, dir.path());
}

#[test]
fn a_worker_killed_mid_job_is_replaced_postgresql() {
    let _heavy = heavy();
    let dir = temp();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let url = postgres_database("worker_kill");
    worker_killed_mid_job(&data, Some(&url), dir.path());
}
