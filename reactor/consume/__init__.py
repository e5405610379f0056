"""The long-running consumer: take deliveries, run the engine, settle each one."""
