"""From the outbox to the Lucidic backend: the wire contract, the sender, the helper process."""
