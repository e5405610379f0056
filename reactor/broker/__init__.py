"""The broker: RabbitMQ topology, consuming, confirmed publishing. The only pika code."""
