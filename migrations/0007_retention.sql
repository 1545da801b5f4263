-- Retention: workers delete dead letters past dead_letter_ttl, oldest first and in
-- batches, whatever their queue (dead_letters_queue leads with the queue name).
CREATE INDEX dead_letters_dead_at ON dead_letters (dead_at);
