package features

// IsControlRecord reports whether a Kafka record is a transaction marker:
// the commit or abort record a broker writes after a transactional
// producer ends a transaction. Kafka clients hide these from applications,
// but kafka-go's Reader hands them over as messages (it ignores the control
// flag of record batches), so they are recognised by their fixed shape: a
// 4-byte key (version 0, type 0 abort or 1 commit) and a 6-byte value
// (version 0, coordinator epoch). A click can never take that shape (its
// value must be a JSON object); another record that has it exactly is taken
// for a marker too, since kafka-go shows nothing else of a record batch.
func IsControlRecord(key, value []byte) bool {
	return len(key) == 4 && key[0] == 0 && key[1] == 0 && key[2] == 0 && key[3] <= 1 &&
		len(value) == 6 && value[0] == 0 && value[1] == 0
}
