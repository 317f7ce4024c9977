"""Real-world services instrumented the way their frameworks' docs say (official OTel
instrumentors, common Prometheus exporters), for testing obsconform's judgement on them."""
