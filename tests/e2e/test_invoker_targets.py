"""The invoker's view of a process it delivers to: every ready instance, however many."""

from conftest import Platform, deploy_bits

# More than any fixed batch the invoker might read the scheduler's instances in.
WORKERS = 70


def running_workers(p, name):
    status, app = p.api("GET", f"/v1/apps/{name}")
    assert status == 200, app
    return sum(1 for i in app["instances_detail"]
               if i["process_type"] == "worker" and i["state"] == "RUNNING")


def test_a_mapping_made_after_a_large_scale_knows_every_instance():
    p = Platform().start()
    try:
        # workers that only sleep: ready once running, as nothing is mapped to them yet
        body = {"instances": 0, "no_route": True,
                "processes": [{"type": "worker", "command": "sleep 3600",
                               "instances": WORKERS, "memory_mb": 16}]}
        deploy_bits(p, "many", [("Procfile", b"web: python3 app.py\nworker: sleep 3600\n"),
                                ("app.py", b"print('unused')\n")], body)
        p.wait_for(lambda: running_workers(p, "many") == WORKERS, 120,
                   f"{WORKERS} running workers")

        # the invoker's target for (many, worker) is made now, with every instance ready
        status, mapping = p.api("POST", "/v1/event-mappings",
                                {"app": "many", "process": "worker", "topic": "jobs",
                                 "max_instances": WORKERS, "idle_grace": "1h"})
        assert status == 201, mapping
        assert mapping["instances"] == WORKERS, mapping
        status, again = p.api("GET", f"/v1/event-mappings/{mapping['id']}")
        assert status == 200 and again["instances"] == WORKERS, again
    finally:
        p.close()
