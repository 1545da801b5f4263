-- Long executions: zart.continue_as_new starts an execution afresh, under the same
-- id, with new input and an empty journal. Each fresh start is a generation.
ALTER TABLE executions ADD COLUMN generation integer NOT NULL DEFAULT 0;
