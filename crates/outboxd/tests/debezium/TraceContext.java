import io.opentelemetry.api.trace.Span;
import io.opentelemetry.api.trace.SpanContext;
import io.opentelemetry.api.trace.TraceFlags;
import io.opentelemetry.api.trace.TraceState;
import io.opentelemetry.api.trace.Tracer;
import io.opentelemetry.api.trace.propagation.W3CTraceContextPropagator;
import io.opentelemetry.context.Context;
import io.opentelemetry.context.Scope;
import io.opentelemetry.context.propagation.ContextPropagators;
import io.opentelemetry.sdk.OpenTelemetrySdk;
import io.opentelemetry.sdk.trace.SdkTracerProvider;
import java.io.StringWriter;
import java.security.SecureRandom;
import java.util.HexFormat;
import java.util.Properties;

/**
 * What an outbox writer stores in the tracingspancontext column, as Debezium's
 * tracing documentation describes it: the OpenTelemetry SDK's W3C propagator
 * injects the current span's context into a java.util.Properties, which is stored
 * with Properties.store. The span is an "outbox-write" child of an incoming
 * request's context carrying vendor trace state; argument "sampled" or "unsampled".
 * Run by crates/outboxd/tests/debezium/tracing_context.rs with `java -cp <otel> …`.
 */
public class TraceContext {
    public static void main(String[] args) throws Exception {
        boolean sampled = args.length == 0 || args[0].equals("sampled");
        OpenTelemetrySdk sdk = OpenTelemetrySdk.builder()
                .setTracerProvider(SdkTracerProvider.builder().build())
                .setPropagators(ContextPropagators.create(W3CTraceContextPropagator.getInstance()))
                .build();
        Tracer tracer = sdk.getTracer("outboxd-golden-test");
        SecureRandom random = new SecureRandom();
        byte[] traceId = new byte[16];
        byte[] spanId = new byte[8];
        random.nextBytes(traceId);
        random.nextBytes(spanId);
        SpanContext request = SpanContext.createFromRemoteParent(
                HexFormat.of().formatHex(traceId),
                HexFormat.of().formatHex(spanId),
                sampled ? TraceFlags.getSampled() : TraceFlags.getDefault(),
                TraceState.builder().put("vendor", "abc").put("other", "x-y").build());
        Span span = tracer.spanBuilder("outbox-write")
                .setParent(Context.root().with(Span.wrap(request)))
                .startSpan();
        try (Scope ignored = span.makeCurrent()) {
            Properties context = new Properties();
            sdk.getPropagators().getTextMapPropagator()
                    .inject(Context.current(), context, Properties::setProperty);
            StringWriter stored = new StringWriter();
            context.store(stored, null);
            System.out.print(stored);
        } finally {
            span.end();
        }
    }
}
