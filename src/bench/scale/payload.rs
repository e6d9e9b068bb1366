//! The synthetic Ray node of the fleet simulation: the ~800 series a real Ray
//! 2.60 node serves, and one scrape's text of them.

use super::TICK;

/// Labels every series of a Ray 2.60 node carries.
pub(crate) fn common(ip: &str, session: &str) -> String {
    format!(r#"ip="{ip}",SessionName="{session}",Version="2.60.0""#)
}

/// The series of one synthetic Ray node (`name{labels}`, and whether it counts
/// up), a mix shaped like a real Ray 2.60 node's ~800: node gauges, per-GPU and
/// per-component gauges, task/actor states by name, resources, gRPC and event
/// loop counters and latency histograms.
pub(crate) fn node_series(ip: &str, session: &str) -> Vec<(String, bool)> {
    let c = common(ip, session);
    let mut out = Vec::new();
    hardware_and_processes(&c, &mut out);
    tasks_actors_and_resources(&c, &mut out);
    rpcs(&c, &mut out);
    histograms(&c, &mut out);
    out
}

/// Nodes' hardware and Ray's processes, per component.
fn hardware_and_processes(c: &str, out: &mut Vec<(String, bool)>) {
    let node = [
        "ray_node_cpu_utilization",
        "ray_node_cpu_count",
        "ray_node_mem_used",
        "ray_node_mem_available",
        "ray_node_mem_total",
        "ray_node_mem_shared_bytes",
        "ray_node_disk_usage",
        "ray_node_disk_free",
        "ray_node_disk_utilization_percentage",
        "ray_node_disk_io_read_speed",
        "ray_node_disk_io_write_speed",
        "ray_node_disk_read_iops",
        "ray_node_disk_write_iops",
        "ray_node_network_send_speed",
        "ray_node_network_receive_speed",
        "ray_object_store_available_memory",
        "ray_object_store_used_memory",
        "ray_object_store_num_local_objects",
        "ray_object_store_memory",
        "ray_object_manager_num_pull_requests",
    ];
    for n in node {
        out.push((format!("{n}{{{c}}}"), false));
    }
    for n in [
        "ray_node_disk_io_read",
        "ray_node_disk_io_write",
        "ray_node_network_sent",
        "ray_node_network_received",
    ] {
        out.push((format!("{n}{{{c}}}"), true));
    }
    for n in [
        "ray_node_gpus_utilization",
        "ray_node_gram_used",
        "ray_node_gram_available",
    ] {
        for g in 0..4 {
            out.push((
                format!(r#"{n}{{{c},GpuIndex="{g}",GpuDeviceName="NVIDIA A100-SXM4-80GB"}}"#),
                false,
            ));
        }
    }
    let components = [
        "raylet",
        "gcs_server",
        "dashboard",
        "dashboard_agent",
        "runtime_env_agent",
        "log_monitor",
        "monitor",
        "ray::IDLE",
        "ray::Trainer.train",
        "ray::preprocess",
        "ray::Reader.read",
        "ray::evaluate",
        "ray::checkpoint",
        "ray::load_shard",
    ];
    for n in [
        "ray_component_cpu_percentage",
        "ray_component_rss_mb",
        "ray_component_uss_mb",
        "ray_component_mem_shared_bytes",
        "ray_component_num_fds",
    ] {
        for comp in components {
            out.push((format!(r#"{n}{{{c},Component="{comp}"}}"#), false));
        }
    }
}

/// Tasks, actors and resources by state.
fn tasks_actors_and_resources(c: &str, out: &mut Vec<(String, bool)>) {
    let names = [
        "train_step",
        "preprocess",
        "load_shard",
        "evaluate",
        "checkpoint",
        "Trainer.__init__",
        "Trainer.train",
        "Reader.read",
    ];
    let states = [
        "PENDING_ARGS_AVAIL",
        "PENDING_NODE_ASSIGNMENT",
        "SUBMITTED_TO_WORKER",
        "RUNNING",
        "RUNNING_IN_RAY_GET",
        "FINISHED",
        "FAILED",
        "PENDING_OBJ_STORE_MEM_AVAIL",
        "PENDING_ARGS_FETCH",
        "SUBMITTED_TO_WORKER_QUEUED",
    ];
    for s in states {
        for name in names {
            for retry in ["0", "1"] {
                out.push((
                    format!(r#"ray_tasks{{{c},State="{s}",Name="{name}",IsRetry="{retry}"}}"#),
                    false,
                ));
            }
        }
    }
    for s in ["ALIVE", "DEAD", "PENDING_CREATION", "RESTARTING", "IDLE"] {
        for name in [
            "Trainer",
            "Reader",
            "Writer",
            "Coordinator",
            "Evaluator",
            "Logger",
        ] {
            out.push((
                format!(r#"ray_actors{{{c},State="{s}",Name="{name}"}}"#),
                false,
            ));
        }
    }
    for r in [
        "CPU",
        "GPU",
        "memory",
        "object_store_memory",
        "accelerator_type:A100",
        "node:__internal_head__",
    ] {
        for s in ["AVAILABLE", "USED"] {
            out.push((
                format!(r#"ray_resources{{{c},Name="{r}",State="{s}"}}"#),
                false,
            ));
        }
    }
}

/// gRPC methods and event-loop handlers.
fn rpcs(c: &str, out: &mut Vec<(String, bool)>) {
    let methods = [
        "NodeManagerService.grpc_server.RequestWorkerLease",
        "NodeManagerService.grpc_server.ReturnWorker",
        "NodeManagerService.grpc_server.GetNodeStats",
        "NodeManagerService.grpc_server.PinObjectIDs",
        "NodeManagerService.grpc_server.ReportWorkerBacklog",
        "NodeManagerService.grpc_server.GetResourceLoad",
        "NodeManagerService.grpc_server.CancelWorkerLease",
        "NodeManagerService.grpc_server.PrepareBundleResources",
        "ObjectManagerService.grpc_server.Push",
        "ObjectManagerService.grpc_server.Pull",
        "ObjectManagerService.grpc_server.FreeObjects",
        "CoreWorkerService.grpc_server.PushTask",
        "CoreWorkerService.grpc_server.GetObjectStatus",
        "CoreWorkerService.grpc_server.WaitForActorRefDeleted",
        "CoreWorkerService.grpc_server.PubsubLongPolling",
        "CoreWorkerService.grpc_server.UpdateObjectLocationBatch",
        "CoreWorkerService.grpc_server.LocalGC",
        "CoreWorkerService.grpc_server.KillActor",
        "CoreWorkerService.grpc_server.NumPendingTasks",
        "InternalKVGcsService.grpc_server.InternalKVGet",
        "InternalKVGcsService.grpc_server.InternalKVPut",
        "NodeInfoGcsService.grpc_server.CheckAlive",
        "WorkerInfoGcsService.grpc_server.ReportWorkerFailure",
    ];
    for m in methods {
        for n in [
            "ray_grpc_server_req_received_total",
            "ray_grpc_server_req_handling_total",
            "ray_grpc_server_req_finished_total",
        ] {
            out.push((format!(r#"{n}{{{c},Method="{m}"}}"#), true));
        }
        let h = "ray_grpc_server_req_process_time_ms";
        for le in [
            "0.1", "0.5", "1", "5", "10", "50", "100", "500", "1000", "5000", "+Inf",
        ] {
            out.push((format!(r#"{h}_bucket{{{c},Method="{m}",le="{le}"}}"#), true));
        }
        out.push((format!(r#"{h}_sum{{{c},Method="{m}"}}"#), true));
        out.push((format!(r#"{h}_count{{{c},Method="{m}"}}"#), true));
    }
    let handlers = [
        "NodeManager.deadline_timer.flush_free_objects",
        "NodeManager.deadline_timer.record_metrics",
        "NodeManager.deadline_timer.debug_state_dump",
        "NodeManager.ScheduleAndDispatchTasks",
        "ObjectManager.ObjectAdded",
        "ObjectManager.ObjectDeleted",
        "RaySyncer.OnDemandBroadcasting",
        "RaySyncer.BroadcastMessage",
        "PeriodicalRunner.RunFnPeriodically",
        "ClientConnection.async_read.ProcessMessageHeader",
        "ClientConnection.async_write.DoAsyncWrites",
        "CoreWorker.RecoverObjects",
        "CoreWorker.ExitIfParentRayletDies",
        "GcsClient.Heartbeat",
        "WorkerPool.PopWorker",
        "WorkerPool.StartWorkerProcess",
        "CoreWorkerDirectActorTaskSubmitter.SubmitTask",
        "NodeManager.HandleRequestWorkerLease",
        "NodeManager.GCTaskFailureReason",
        "Subscriber.HandlePublishedMessage",
    ];
    for hd in handlers {
        for n in [
            "ray_operation_count",
            "ray_operation_run_time_ms",
            "ray_operation_queue_time_ms",
            "ray_operation_active_count",
        ] {
            out.push((
                format!(r#"{n}{{{c},Method="{hd}"}}"#),
                n != "ray_operation_active_count",
            ));
        }
    }
}

/// Scheduler and operation histograms.
fn histograms(c: &str, out: &mut Vec<(String, bool)>) {
    for (n, values) in [
        (
            "ray_scheduler_tasks",
            &["Infeasible", "Waiting", "Dispatched", "Spilled", "Running"][..],
        ),
        (
            "ray_scheduler_unscheduleable_tasks",
            &[
                "WaitingForResources",
                "WaitingForPlasmaMemory",
                "WaitingForRemoteResources",
                "WaitingForWorkers",
                "WaitingForPull",
            ][..],
        ),
        (
            "ray_spill_manager_objects",
            &["Pinned", "PendingRestore", "PendingSpill"][..],
        ),
        (
            "ray_object_store_memory_by_location",
            &["MMAP_SHM", "MMAP_DISK", "SPILLED", "WORKER_HEAP"][..],
        ),
    ] {
        for v in values {
            out.push((format!(r#"{n}{{{c},State="{v}"}}"#), false));
        }
    }
    for n in [
        "ray_internal_num_processes_started",
        "ray_internal_num_spilled_tasks",
        "ray_internal_num_infeasible_scheduling_classes",
        "ray_pull_manager_requests",
        "ray_pull_manager_active_bundles",
        "ray_push_manager_in_flight_pushes",
        "ray_gcs_placement_group_count",
        "ray_gcs_actors_count",
        "ray_health_check_rpc_latency_ms_sum",
        "ray_health_check_rpc_latency_ms_count",
        "ray_object_directory_added_locations",
        "ray_object_directory_removed_locations",
        "ray_object_directory_lookups",
        "ray_object_directory_subscriptions",
        "ray_memory_manager_worker_eviction_total",
        "ray_worker_register_time_ms_sum",
        "ray_worker_register_time_ms_count",
        "ray_raylet_mem",
        "ray_raylet_cpu",
        "ray_object_manager_bytes",
    ] {
        out.push((
            format!("{n}{{{c}}}"),
            n.ends_with("_count") || n.ends_with("_sum"),
        ));
    }
}

/// One scrape's text of `series` (its `n`th), with the tick series when `tick`.
pub(crate) fn render(series: &[(String, bool)], n: u64, tick: bool) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(series.len() * 160);
    if tick {
        let _ = writeln!(s, "{TICK} {n}");
    }
    for (i, (name, counter)) in (0u64..).zip(series) {
        let v = if *counter {
            (i + 1) * n
        } else {
            (i * 7 + n) % 1000
        };
        let _ = writeln!(s, "{name} {v}");
    }
    s
}
